"""Text the teacher writes after the context: continuations of the distillation inputs (``cd.generate``;
Snell et al., 2022) and its replies to the held-out inputs (the reply measure of :mod:`.heldout`).

Distilling only on the given inputs teaches the student what follows *them*; sampling continuations
from the teacher (which reads the context) and distilling on input + continuation also covers the
text the context makes likely -- for a user turn, the teacher's own replies (Anthropic's recipe:
sample with the context, train without it).  A continuation is sampled from the teacher's full
distribution (no top-k/top-p truncation) at ``temperature``, or taken greedily; the context's shared
prefix is encoded once and its KV cache copied into each generation.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ...scoring.core import PrefixCache
from ...models.interface import lm_parts
from ...models.parts import vocab_logits


def _cache_copy(cache: PrefixCache) -> DynamicCache:
    """A fresh DynamicCache holding the prefix (generation appends to it, the prefix stays reusable)."""
    out = DynamicCache()
    for i, (keys, values) in enumerate(cache.dense_layers()):
        out.update(keys.clone(), values.clone(), i)
    return out


def continuations(model, tokenizer, prefix_ids: list[int], suffixes: list[list[int]], cache: PrefixCache | None,
                  n: int, max_new_tokens: int | list[int], temperature: float, seed: int,
                  sample: bool = True) -> list[list[int]]:
    """``n`` continuations (token ids, ending at EOS if one is generated) of each reading ``prefix_ids +
    suffixes[i]``, in order (reading 0's n, then reading 1's ...); ``cache`` holds the prefix.  Sampled
    ones are seeded per reading and sample, so a rerun draws the same text; ``sample=False``: greedy.
    ``max_new_tokens`` may be given per reading (what fits its window); 0 gives an empty continuation."""
    device = next(model.parameters()).device
    cache_kwarg = lm_parts(model).cache_kwarg  # generate renamed past_key_values to cache with forward
    limits = max_new_tokens if isinstance(max_new_tokens, list) else [max_new_tokens] * len(suffixes)
    out = []
    with torch.inference_mode():
        for i, (x, limit) in enumerate(zip(suffixes, limits)):
            ids = torch.tensor([list(prefix_ids) + list(x)], device=device)
            for j in range(n):
                if limit <= 0:
                    out.append([])
                    continue
                torch.manual_seed(seed * 1_000_003 + i * 101 + j)
                kwargs = {cache_kwarg: _cache_copy(cache)} if cache is not None else {}
                how = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if sample else {
                    "do_sample": False}
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=limit,
                                     pad_token_id=tokenizer.pad_token_id, **how, **kwargs)
                out.append(gen[0, ids.shape[1]:].tolist())
    return out


def eos_ids(model, tokenizer) -> set[int]:
    """The tokens that end a generation: the model's generation config's, else the tokenizer's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    return set(eos if isinstance(eos, (list, tuple)) else [] if eos is None else [eos])


def greedy_after(parts, cache: PrefixCache | None, ids: list[int], limit: int, stop: set[int]) -> list[int]:
    """Greedy continuation of ``ids`` read after ``cache`` (whose entries may have been evicted: positions go
    on from :attr:`PrefixCache.position`), ending at a ``stop`` token (kept, as ``generate`` keeps it).  The
    step ``generate`` takes, written out, because ``generate`` counts positions by the cache's length."""
    past = _cache_copy(cache) if cache is not None else DynamicCache()
    position, out = cache.position if cache is not None else 0, []
    seen, step = past.get_seq_length(), list(ids)
    with torch.inference_mode():
        for _ in range(limit):
            x = torch.tensor([step], device=parts.device)
            positions = torch.arange(position, position + len(step), device=parts.device)[None]
            hidden = parts.backbone(input_ids=x, attention_mask=torch.ones(1, seen + len(step), dtype=torch.long,
                                                                           device=parts.device),
                                    position_ids=positions, use_cache=True, **{parts.cache_kwarg: past}
                                    ).last_hidden_state[0, -1]
            token = int(vocab_logits(parts, hidden[None]).argmax(-1))
            out.append(token)
            seen, position, step = seen + len(step), position + len(step), [token]
            if token in stop:
                break
    return out


COPIES_BYTES = 2 << 30  # the cache copies a batch of greedy replies may hold at once


def greedy_batch(parts, cache: PrefixCache | None, seqs: list[list[int]], limits: list[int], stop: set[int],
                 batch_size: int = 8) -> list[list[int]]:
    """:func:`greedy_after` for many inputs, ``batch_size`` at a time: one token step serves the whole batch
    (a step of a small model at batch 1 is bound by reading its weights, so a batch of 8 costs about what one
    input does).  Inputs are left-padded after the cache (pads masked, each row's positions counted from its
    own first token), so every row reads what it would alone.  Each row holds a copy of the cache: a long
    context's copies are bounded by :data:`COPIES_BYTES` (down to one row at a time)."""
    out: list[list[int]] = [[] for _ in seqs]
    order = sorted((i for i in range(len(seqs)) if limits[i] > 0), key=lambda i: -len(seqs[i]))
    if cache is not None:
        one = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in cache.dense_layers())
        batch_size = max(1, min(batch_size, COPIES_BYTES // max(one, 1)))
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        for i, tokens in zip(batch, _greedy_rows(parts, cache, [seqs[i] for i in batch], [limits[i] for i in batch],
                                                 stop)):
            out[i] = tokens
    return out


def left_padded(parts, cache: PrefixCache | None, seqs: list[list[int]]) -> tuple[DynamicCache, dict]:
    """A batch's first step after ``cache``: the cache copied for every row, and the backbone's inputs -- rows
    left-padded (pads masked), each row's positions counted from its own first token on from the cache's."""
    n, width, device = len(seqs), max(len(s) for s in seqs), parts.device
    past = DynamicCache()
    for i, (keys, values) in enumerate(cache.dense_layers() if cache is not None else []):
        past.update(keys.expand(n, *keys.shape[1:]).clone(), values.expand(n, *values.shape[1:]).clone(), i)
    seen, base = (cache.length, cache.position) if cache is not None else (0, 0)
    pads = torch.tensor([width - len(s) for s in seqs], device=device)
    own = torch.arange(width, device=device)[None] >= pads[:, None]
    return past, {"input_ids": torch.tensor([[0] * (width - len(s)) + list(s) for s in seqs], device=device),
                  "attention_mask": torch.cat([own.new_ones(n, seen), own], dim=1).long(),
                  "position_ids": (base + torch.arange(width, device=device)[None] - pads[:, None]).clamp(min=base)}


def _greedy_rows(parts, cache: PrefixCache | None, seqs: list[list[int]], limits: list[int],
                 stop: set[int]) -> list[list[int]]:
    past, step = left_padded(parts, cache, seqs)
    out: list[list[int]] = [[] for _ in seqs]
    done = [False] * len(seqs)
    with torch.inference_mode():
        for _ in range(max(limits)):
            hidden = parts.backbone(**step, use_cache=True, **{parts.cache_kwarg: past}).last_hidden_state[:, -1]
            tokens = vocab_logits(parts, hidden).argmax(-1)
            for r, token in enumerate(tokens.tolist()):
                if not done[r]:
                    out[r].append(token)
                    done[r] = token in stop or len(out[r]) >= limits[r]
            if all(done):
                break
            mask = step["attention_mask"]
            step = {"input_ids": tokens[:, None], "position_ids": step["position_ids"][:, -1:] + 1,
                    "attention_mask": torch.cat([mask, mask.new_ones(len(seqs), 1)], dim=1)}
    return out
