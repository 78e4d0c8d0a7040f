"""Verbalizer scores at the answer position, batched, optionally against a cached demonstration prefix.

ICL, PBFT and CD all ask the same question of a causal LM: at the last position of a prompt, how much
do the verbalizer tokens (" Yes"/" No", ...) score?  Answering it needs the backbone's last hidden state
at that one position and the LM-head rows of those few tokens -- never full-vocabulary logits at every
position (50k x sequence length floats per example for nothing).  An encoder-decoder (T5, BART)
answers it at the decoder's first position, its encoder reading the whole prompt (:mod:`adaptbench.seq2seq`).

For ICL the demonstrations of a data seed are the same for every query, so the prefix is encoded once;
its keys/values are then broadcast to each batch of queries (:class:`PrefixCache`).  Only the query
tokens run through the model.  The plain full-context path (prefix ids + query ids as one sequence) is
kept as the reference the cached path is tested against.
"""

from __future__ import annotations

import gc
import math
import os
from collections.abc import Callable, Sequence
from contextlib import contextmanager, nullcontext
from typing import TypeVar

import numpy as np
import torch
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from ..models.capabilities import shared_prefix_unsupported
from ..models.parts import LMParts, verbalizer_logits, vocab_logits
from . import shared_prefix
from .scores import Scores
from .shared_prefix import SharedPrefixCache, SharedPrefixLayer

T = TypeVar("T")


class _PrefixLayer(DynamicLayer):
    """One layer's prefix keys/values, broadcast to the batch and never grown.

    ``update`` returns prefix + new states without storing them, so a forward over a batch keeps only
    the layer it is computing expanded in memory -- not every layer's (batch x prefix) copy at once.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, batch_size: int):
        super().__init__()
        self.keys, self.values = keys, values
        self.batch_size = batch_size
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        b = key_states.shape[0]
        keys = torch.cat([self.keys.expand(b, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.expand(b, -1, -1, -1), value_states], dim=-2)
        return keys, values


def prefix_attention(config) -> str:
    """How queries attend to a cached prefix on this model, for the record: ``shared`` (one copy of the
    prefix per batch, :mod:`adaptbench.shared_prefix`) or ``expanded (<why not shared>)``."""
    why_not = shared_prefix_unsupported(config)
    return "shared" if why_not is None else f"expanded ({why_not})"


class PrefixCache:
    """Keys/values of a prefix encoded once (batch 1), reusable for any number of query batches."""

    def __init__(self, layers: list[tuple[torch.Tensor, torch.Tensor]], length: int,
                 last_hidden: torch.Tensor | None = None, shared: bool = False, position: int | None = None):
        self.layers = layers
        self.length = length  # cached positions (what a query's attention mask covers before its own tokens)
        # the position of the token after the prefix: its length, or more when entries were evicted
        # (a compressed cache, :mod:`.kv_press`, keeps the positions its keys were encoded at)
        self.position = length if position is None else position
        self.last_hidden = last_hidden  # (hidden,): the final hidden state at the prefix's last token
        self.shared = shared  # queries attend to it through adaptbench.shared_prefix (else expanded per row)

    @classmethod
    def encode(cls, parts: LMParts, prefix_ids: Sequence[int], shared: bool | None = None) -> PrefixCache:
        """``shared``: queries attend to it through :mod:`adaptbench.shared_prefix`; None: wherever the
        model's attention allows (see :func:`adaptbench.models.capabilities.shared_prefix_unsupported`)."""
        ids = torch.tensor([list(prefix_ids)], device=parts.device)
        cache = DynamicCache()
        with torch.inference_mode():
            out = parts.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                 **{parts.cache_kwarg: cache})
        layers = [(layer.keys, layer.values) for layer in cache.layers]
        if shared is None:
            shared = shared_prefix_unsupported(parts.backbone.config) is None
        return cls(layers, len(prefix_ids), out.last_hidden_state[0, -1], shared)

    def truncated(self, length: int) -> PrefixCache:
        """The cache of the first ``length`` tokens: causal attention makes a position's keys/values
        depend only on the tokens up to it, so a slice is exactly the shorter prefix's cache."""
        if length >= self.length:
            return self
        return PrefixCache([(k[..., :length, :], v[..., :length, :]) for k, v in self.layers], length,
                           shared=self.shared)  # no last_hidden

    def extended(self, parts: LMParts, more_ids: Sequence[int]) -> PrefixCache:
        """The cache of this prefix followed by ``more_ids``: only the new tokens are run, attending to the
        cached ones at their own positions -- the same keys/values as encoding the whole prefix at once
        (up to float rounding).  Used where many prefixes share a start (CD's leave-one-out contexts)."""
        ids = torch.tensor([list(more_ids)], device=parts.device)
        cache = DynamicCache()
        for i, (k, v) in enumerate(self.layers):
            cache.update(k, v, i)
        n = self.length + len(more_ids)
        positions = torch.arange(self.length, n, device=parts.device)[None]
        with torch.inference_mode():
            out = parts.backbone(input_ids=ids, attention_mask=torch.ones(1, n, dtype=torch.long, device=parts.device),
                                 position_ids=positions, use_cache=True, **{parts.cache_kwarg: cache})
        return PrefixCache([(layer.keys, layer.values) for layer in cache.layers], n, out.last_hidden_state[0, -1],
                           self.shared)

    def for_batch(self, batch_size: int) -> Cache:
        return Cache(layers=[_PrefixLayer(k, v, batch_size) for k, v in self.layers])

    def dense_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Its keys/values as plain tensors (a quantized cache's dequantized), e.g. to seed a generation."""
        return self.layers

    def for_shared_batch(self, answers_only: bool = False) -> SharedPrefixCache:
        """The cache for :mod:`adaptbench.shared_prefix` attention: the prefix once, never expanded."""
        return SharedPrefixCache([SharedPrefixLayer(k, v) for k, v in self.layers], answers_only)

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (ids, attention_mask).  Right padding keeps every real token at
    the same positions it would have alone, so causal attention never sees a pad before a real token."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def last_hidden(parts: LMParts, ids: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
    """Final hidden state at the answer position of each sequence, (n, hidden): a causal LM's last real
    token, an encoder-decoder's first decoder position (see :meth:`LMParts.answer_states`)."""
    return parts.answer_states(ids, mask, ends, **kwargs)


def _hidden_states(parts: LMParts, seqs: Sequence[Sequence[int]], pad_id: int, prefix: PrefixCache | None,
                   answers_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Final hidden states of right-padded sequences (batch, width, hidden) and their 2D mask.

    With ``prefix``, the sequences are continuations of the cached prefix: positions start at the
    prefix length and the attention mask covers prefix + sequence.  ``answers_only``: the caller reads
    each row's last real position alone (a shared prefix then skips the others' work in the last layer).
    """
    ids, mask = pad_right(seqs, pad_id)
    ids, mask = ids.to(parts.device), mask.to(parts.device)
    if prefix is None:
        return parts.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state, mask
    offset = prefix.position
    full_mask = torch.cat([mask.new_ones(len(seqs), prefix.length), mask], dim=1)
    positions = torch.arange(offset, offset + ids.shape[1], device=parts.device).expand(len(seqs), -1)
    if prefix.shared:  # the batch's queries attend to the one copy of the prefix together
        cache = prefix.for_shared_batch(answers_only)
        attention, extra = shared_prefix.enabled(parts.backbone.config), {"shared_prefix": cache}
    else:
        cache, attention, extra = prefix.for_batch(len(seqs)), nullcontext(), {}
    with attention:
        out = parts.backbone(input_ids=ids, attention_mask=full_mask, position_ids=positions, use_cache=True,
                             **extra, **{parts.cache_kwarg: cache})
    return out.last_hidden_state, mask


def answer_hidden(parts: LMParts, seqs: Sequence[Sequence[int]], pad_id: int,
                  prefix: PrefixCache | None = None) -> torch.Tensor:
    """Final hidden state at the answer position of each sequence, (batch, hidden)."""
    if prefix is None:
        ids, mask = pad_right(seqs, pad_id)
        return last_hidden(parts, ids.to(parts.device), mask.to(parts.device), use_cache=False)
    hidden, mask = _hidden_states(parts, seqs, pad_id, prefix, answers_only=True)
    return hidden[torch.arange(len(seqs), device=hidden.device), mask.sum(dim=1) - 1]


def sequence_hidden(parts: LMParts, seqs: Sequence[Sequence[int]], pad_id: int,
                    prefix: PrefixCache | None = None) -> list[torch.Tensor]:
    """Final hidden states at every position of each sequence: a list of (len_i, hidden) tensors
    (sequence-level context distillation needs the distribution after every token, not one answer)."""
    hidden, mask = _hidden_states(parts, seqs, pad_id, prefix)
    return [hidden[i, : len(s)] for i, s in enumerate(seqs)]


def batched_logits(model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                   batch_size: int = 8, on_batch: Callable[[int], None] | None = None) -> tuple[np.ndarray, int, int]:
    """Logits of a task model (``model(ids, mask) -> (batch, n_labels)``) for every sequence, in order,
    from length-sorted batches; also returns (real tokens, padded tokens)."""
    out: np.ndarray | None = None
    tokens = padded = 0
    with torch.inference_mode():
        for batch in length_batches([len(s) for s in seqs], batch_size):
            ids, mask = pad_right([seqs[i] for i in batch], pad_id)
            logits = model(ids.to(device), mask.to(device)).float().cpu().numpy()
            if out is None:
                out = np.zeros((len(seqs), logits.shape[1]), dtype=np.float32)
            out[batch] = logits
            tokens += int(mask.sum())
            padded += mask.numel()
            if on_batch is not None:
                on_batch(len(batch))
    return out, tokens, padded


def backing_off(run: Callable[[int], T], batch_size: int, auto: bool, info: dict) -> T:
    """``run(batch_size)``; where the batch size is ``auto`` a CUDA out-of-memory error halves it and runs again
    (the idea of accelerate's ``find_executable_batch_size``), down to 1, and ``info["batch_size_backoff"]``
    records the sizes that ran out and the one it settled on (later calls start there).  A batch size the user
    set is never changed."""
    settled = (info.get("batch_size_backoff") or {}).get("settled")
    batch_size = min(batch_size, settled) if auto and settled else batch_size
    while True:
        try:
            return run(batch_size)
        except torch.cuda.OutOfMemoryError:
            if not auto or batch_size == 1:
                raise
            gc.collect()
            torch.cuda.empty_cache()
            backoff = info.setdefault("batch_size_backoff", {"out_of_memory_at": [], "settled": None})
            backoff["out_of_memory_at"].append(batch_size)
            batch_size //= 2
            backoff["settled"] = batch_size


@contextmanager
def _sdpa_gqa(device: torch.device):
    """On CPU, let SDPA handle grouped-query attention itself instead of transformers' ``repeat_kv``.

    With an attention mask transformers copies keys/values once per query head before calling SDPA;
    torch's CPU kernel takes ``enable_gqa`` with a mask, which saves that copy (~20% of the cached-path
    time on SmolLM2).  On CUDA transformers' own choice is kept (masked GQA may hit the math kernel).
    """
    if device.type != "cpu" or os.environ.get(_GQA_ENV) is not None:
        yield
        return
    os.environ[_GQA_ENV] = "1"
    try:
        yield
    finally:
        os.environ.pop(_GQA_ENV, None)


_GQA_ENV = "TRANSFORMERS_SDPA_FORCE_GQA"


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory trouble shows early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def score(
    parts: LMParts,
    queries: Sequence[Sequence[int]],
    label_token_ids: Sequence[int],
    pad_id: int,
    *,
    prefix_ids: Sequence[int] = (),
    prefix_cache: PrefixCache | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
    full_vocab: bool = False,
) -> Scores:
    """Score every query (a list of token ids ending at the answer position).

    ``prefix_cache`` given: queries run against it (fast path).  Otherwise ``prefix_ids`` is joined to
    each query as ids and the whole sequence runs (reference path).  ``on_batch(n)`` reports progress;
    ``full_vocab`` also returns the full next-token logits at each answer position.
    """
    n_labels = len(label_token_ids)
    logits = np.zeros((len(queries), n_labels), dtype=np.float32)
    log_norm = np.zeros(len(queries), dtype=np.float32)
    vocab = np.zeros((len(queries), parts.vocab_size), dtype=np.float32) if full_vocab else None
    token_ids = torch.tensor(list(label_token_ids), device=parts.device)
    tokens = padded = 0  # the cached prefix is charged where it was encoded, not here
    with torch.inference_mode(), _sdpa_gqa(parts.device):
        for batch in length_batches([len(q) for q in queries], batch_size):
            if prefix_cache is not None:
                seqs = [queries[i] for i in batch]
            else:
                seqs = [list(prefix_ids) + list(queries[i]) for i in batch]
            hidden = answer_hidden(parts, seqs, pad_id, prefix_cache)
            logits[batch] = verbalizer_logits(parts, hidden, token_ids).cpu().numpy()
            all_logits = vocab_logits(parts, hidden)
            log_norm[batch] = torch.logsumexp(all_logits, dim=-1).cpu().numpy()
            if vocab is not None:
                vocab[batch] = all_logits.cpu().numpy()
            tokens += sum(len(s) for s in seqs)
            padded += len(seqs) * max(len(s) for s in seqs)
            if on_batch is not None:
                on_batch(len(batch))
    if not np.isfinite(logits).all():
        bad = int((~np.isfinite(logits)).any(axis=1).sum())
        raise FloatingPointError(f"{bad} of {len(queries)} examples got non-finite verbalizer logits")
    return Scores(logits, log_norm, tokens, padded, vocab)


def auto_batch_size(parts: LMParts, config, prefix_len: int, query_len: int, free_bytes: int,
                    cap: int = 64) -> int:
    """Largest batch whose activations fit in a quarter of ``free_bytes`` (a conservative estimate).

    Per example and layer the forward holds the query's hidden states and MLP activations, the
    attention scores (heads x query x (prefix + query)) and the prefix keys/values expanded to the
    batch for the layer being computed -- once per query head where transformers repeats grouped
    keys/values (GPU; on CPU SDPA groups them itself).  Only one layer is live at a time in inference
    mode.  At the answer position the head's output row (model dtype) and its float32 copy.
    """
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 768)
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 12)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * hidden
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    if parts.device.type != "cpu":
        kv_heads = heads  # repeat_kv copies grouped keys/values per query head
    width = parts.head_weight.element_size()
    kv = prefix_len + query_len
    per_example = width * (
        query_len * (4 * hidden + 2 * inter)
        + heads * query_len * kv
        + 2 * kv_heads * head_dim * kv
        + 2 * kv_heads * head_dim * query_len  # the query's own keys/values, concatenated
    ) + (width + 4) * parts.vocab_size  # the output row at the answer position, and its float32 copy
    budget = free_bytes // 4
    return int(max(1, min(cap, math.floor(budget / max(per_example, 1)))))
