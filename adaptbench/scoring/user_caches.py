"""Many users' caches answered in one batch: row i of a batch reads after user i's own cache.

A server holding a long history per user keeps one KV cache (or compressed cache, or cartridge) per user
and batches their queries.  :class:`UserCaches` is that batch: each forward layer gathers the users'
keys/values for the layer it computes (dequantizing a quantized cache there), so only that layer's
(batch x prefix) copy is live, as with one cache broadcast to a batch (:class:`.core._PrefixLayer`).
The users' caches must be of one length and position (copies of one context, cut to one length).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache

from .core import PrefixCache, _PrefixLayer


def _dense(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (t.dequantize() if hasattr(t, "dequantize") and type(t) is not torch.Tensor else t).to(dtype)


class _UsersLayer(_PrefixLayer):
    """One layer of every user's cache, stacked along the batch when a forward reaches it."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        super().__init__(keys[0], values[0], len(keys))
        self.each_keys, self.each_values = keys, values

    def update(self, key_states, value_states, *args, **kwargs):
        if key_states.shape[0] != len(self.each_keys):
            raise ValueError(f"a batch of {key_states.shape[0]} queries for {len(self.each_keys)} users' caches")
        keys = torch.cat([_dense(k, key_states.dtype) for k in self.each_keys], dim=0)
        values = torch.cat([_dense(v, value_states.dtype) for v in self.each_values], dim=0)
        return torch.cat([keys, key_states], dim=-2), torch.cat([values, value_states], dim=-2)


class UserCaches(PrefixCache):
    """The caches of a batch's users, one per row (their bytes: the sum of theirs)."""

    def __init__(self, caches: list[PrefixCache]):
        lengths = {(c.length, c.position) for c in caches}
        if len(lengths) != 1:
            raise ValueError(f"users' caches of different lengths/positions {sorted(lengths)} cannot share a batch")
        self.users = caches
        super().__init__(caches[0].layers, caches[0].length, shared=False, position=caches[0].position)

    def for_batch(self, batch_size: int) -> Cache:
        if batch_size != len(self.users):
            raise ValueError(f"a batch of {batch_size} queries for {len(self.users)} users' caches")
        return Cache(layers=[_UsersLayer([c.layers[i][0] for c in self.users], [c.layers[i][1] for c in self.users])
                             for i in range(len(self.layers))])

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.users)


def _copy(t: torch.Tensor) -> torch.Tensor:
    """New storage for a tensor; a tensor subclass (a quanto QTensor, whose ``clone`` dequantizes) rebuilt
    from copies of its inner tensors."""
    if hasattr(t, "__tensor_flatten__") and type(t) is not torch.Tensor:
        names, meta = t.__tensor_flatten__()
        return type(t).__tensor_unflatten__({n: _copy(getattr(t, n)) for n in names}, meta, t.size(), t.stride())
    return t.clone()


def copy_cache(cache: PrefixCache) -> PrefixCache:
    """A user's own copy of a cache (new storage, same kind: a quantized cache stays quantized)."""
    return type(cache)([(_copy(k), _copy(v)) for k, v in cache.layers], cache.length, shared=False,
                       position=cache.position)
