"""A context's KV cache made smaller once, by a query-agnostic score, and reused for every query.

Two presses, each evicting ``compression_ratio`` of the cached positions in every layer and KV head
(the same count per head, as NVIDIA's kvpress does, so a layer stays one tensor):

- ``knorm`` -- Devoto et al., 2024, "A Simple and Effective L2 Norm-Based Strategy for KV Cache
  Compression": keys with a *low* L2 norm draw high attention, so each head keeps the positions whose
  keys have the smallest norms;
- ``streaming`` -- Xiao et al., 2024, "Efficient Streaming Language Models with Attention Sinks"
  (StreamingLLM): the first ``sink`` positions and the most recent ones.

Kept entries stay in position order and keep the positions their keys were encoded at (rotary
embeddings are already applied to cached keys), so a query continues at the uncompressed length
(:attr:`PrefixCache.position`).  kvpress itself pins transformers < 5.3, hence this small press.
"""

from __future__ import annotations

import math

import torch

from .core import PrefixCache

PRESSES = ("knorm", "streaming")


def kept_count(length: int, compression_ratio: float) -> int:
    """Positions each head keeps: ``length - floor(length * compression_ratio)``, at least one."""
    if not 0.0 < compression_ratio < 1.0:
        raise ValueError(f"compression_ratio is the share of the cache evicted, between 0 and 1 (exclusive); "
                         f"got {compression_ratio}")
    return max(1, length - math.floor(length * compression_ratio))


def _kept_positions(keys: torch.Tensor, keep: int, press: str, sink: int) -> torch.Tensor:
    """(batch, kv_heads, keep) indices, sorted, of the positions one layer keeps."""
    b, h, n, _ = keys.shape
    if press == "knorm":
        return keys.float().norm(dim=-1).topk(keep, dim=-1, largest=False).indices.sort(dim=-1).values
    if press == "streaming":
        first = min(sink, keep)
        idx = torch.cat([torch.arange(first), torch.arange(n - (keep - first), n)]).to(keys.device)
        return idx.expand(b, h, keep)
    raise ValueError(f"unknown press {press!r}; choose from {', '.join(PRESSES)}")


def compress(cache: PrefixCache, compression_ratio: float, press: str = "knorm", sink: int = 4) -> PrefixCache:
    """A new cache holding, per layer and KV head, the positions ``press`` keeps (the input is unchanged)."""
    keep = kept_count(cache.length, compression_ratio)
    layers = []
    for keys, values in cache.layers:
        idx = _kept_positions(keys, keep, press, sink)[..., None]
        layers.append((keys.gather(2, idx.expand(-1, -1, -1, keys.shape[-1])).contiguous(),
                       values.gather(2, idx.expand(-1, -1, -1, values.shape[-1])).contiguous()))
    return PrefixCache(layers, keep, cache.last_hidden, shared=False, position=cache.position)
