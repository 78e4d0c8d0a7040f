"""A context's KV cache made smaller once -- entries evicted by a query-agnostic score, or kept in fewer
bits -- and reused for every query.

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

Quantization (:func:`quantize`) keeps the keys and values as 2- or 4-bit integers through optimum-quanto, as
transformers' ``QuantizedCache`` stores them; a query's forward dequantizes each layer when it reaches it.
"""

from __future__ import annotations

import math

import torch
from transformers.cache_utils import Cache

from ..errors import ConfigError
from .core import PrefixCache, _PrefixLayer

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


# -- quantization ------------------------------------------------------------------------------------------

QUANTO_BITS = (2, 4)  # optimum-quanto's integer types for a KV cache (as transformers' QuantizedCache uses it)


def _tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor, or of the inner tensors of a tensor subclass (a quanto QTensor: packed data, scale,
    shift) through the subclass protocol."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


class _QuantizedLayer(_PrefixLayer):
    """A quantized prefix layer: dequantized when a batch's forward reaches it, then dropped."""

    def update(self, key_states, value_states, *args, **kwargs):
        b = key_states.shape[0]
        keys = torch.cat([self.keys.dequantize().to(key_states.dtype).expand(b, -1, -1, -1), key_states], dim=-2)
        values = torch.cat([self.values.dequantize().to(value_states.dtype).expand(b, -1, -1, -1), value_states], dim=-2)
        return keys, values


class QuantizedPrefix(PrefixCache):
    """A prefix cache kept as ``bits``-bit integers (optimum-quanto, group-wise, as transformers'
    ``QuantizedCache`` stores its keys/values), dequantized layer by layer by each forward."""

    def for_batch(self, batch_size: int) -> Cache:
        return Cache(layers=[_QuantizedLayer(k, v, batch_size) for k, v in self.layers])

    def dense_layers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(k.dequantize(), v.dequantize()) for k, v in self.layers]

    @property
    def nbytes(self) -> int:
        return sum(_tensor_bytes(k) + _tensor_bytes(v) for k, v in self.layers)


def quantize(cache: PrefixCache, bits: int, group_size: int = 64) -> QuantizedPrefix:
    """The cache's keys and values as ``bits``-bit integers in groups of ``group_size`` along axis 0 with a
    scale and shift per group (optimum-quanto's MaxOptimizer, transformers' QuantizedCache defaults)."""
    try:
        from optimum.quanto import MaxOptimizer, qint2, qint4, quantize_weight
    except ImportError:
        raise ConfigError("a quantized KV cache (cd.arms kv_compressed bits) needs optimum-quanto: pip install "
                          "'adaptbench[kv]'") from None
    if bits not in QUANTO_BITS:
        raise ConfigError(f"bits: {bits}; optimum-quanto quantizes a KV cache to {' or '.join(map(str, QUANTO_BITS))} bits")
    qtype, optimizer = {2: qint2, 4: qint4}[bits], MaxOptimizer()

    def packed(t: torch.Tensor):
        scale, shift = optimizer(t, qtype, 0, group_size)
        return quantize_weight(t, qtype, 0, scale, shift, group_size)

    return QuantizedPrefix([(packed(k), packed(v)) for k, v in cache.layers], cache.length, cache.last_hidden,
                           shared=False, position=cache.position)
