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
