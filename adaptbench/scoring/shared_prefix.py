"""Attention to a shared prefix once per batch, not once per query (Hydragen; FlashInfer's cascade attention).

ICL scores every query after the same demonstrations, and the CD teacher every input after the same
context.  With a KV cache of that prefix, the usual path still hands each row of a batch its own
expanded copy of the prefix keys and values in every layer and runs attention row by row over it: at
an 8k-token prefix that is most of the work per query token, and most of it memory traffic.

Attention decomposes exactly over a split of the keys (softmax over prefix ++ suffix = the softmaxes
over each, weighted by their log-sum-exp values), so the prefix needs no copy per row.  On CPU, where
torch's fused flash-attention kernel returns the log-sum-exp, the queries of *all* rows of a batch --
and the query heads that share a key head (grouped-query attention) -- are stacked as one sequence per
key head that attends to the single copy of the prefix without a mask; each row then attends to its own
new keys (causally, padding excluded), and the two results are merged (:func:`_merged`).  Elsewhere
(CUDA's kernels return the log-sum-exp under signatures no test here can run) the rows are stacked
against the prefix followed by every row's new keys, under a mask that shows each query only its own
row's (:func:`_rows`): also exact, at the price of the masked key columns of the other rows.  On CPU,
positions whose output nothing reads (padding; in the last layer every position but the rows'
answers when only those are read) skip the prefix (:func:`_needed`).

It plugs into transformers through its own extension points: an attention function registered in
``AttentionInterface`` (with the sdpa mask in ``AttentionMaskInterface``) and a cache layer
(:class:`SharedPrefixLayer`) that keeps the prefix and returns only the new keys and values; the prefix
reaches the attention function as the ``shared_prefix`` keyword argument that the model forwards to it.
Models whose attention is not plain causal softmax attention (sliding windows, logit soft-capping,
ALiBi) keep the expanded path, with the reason recorded.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers.cache_utils import Cache, DynamicLayer

from ..models.capabilities import SHARED_PREFIX_ATTENTION

NAME = SHARED_PREFIX_ATTENTION
#: Batch rows stacked into one attention call: more rows share one pass over the prefix keys, but each
#: query also passes over the other rows' (masked) new keys, so very many rows waste work.
ROWS_PER_CHUNK = 32


class SharedPrefixLayer(DynamicLayer):
    """One layer's prefix keys/values (batch 1), never expanded or grown: ``update`` returns the new
    states alone, and :func:`attention` reads the prefix from here."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.device = keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return key_states, value_states


class SharedPrefixCache(Cache):
    """The prefix's layers for one forward; ``answers_only``: the caller reads each row's answer position
    alone (ICL scoring), so the last layer attends to the prefix from those positions only."""

    def __init__(self, layers: list[SharedPrefixLayer], answers_only: bool = False):
        super().__init__(layers=layers)
        self.answers_only = answers_only


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              shared_prefix=None, **kwargs):
    """query (b, heads, q, d); key/value: the new states (b, kv_heads, q, d); the prefix in ``shared_prefix``
    (the cache whose layer ``module.layer_idx`` holds it).  Returns (b, q, heads, d), as sdpa does.

    Exactly each row's attention to its prefix + its own new keys (causally, padding excluded, as the
    model's mask says), with the prefix read once per batch: :func:`_merged` where a fused kernel returns
    the log-sum-exp, :func:`_rows` elsewhere."""
    if shared_prefix is None:  # any other forward of the model (training, generation): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layer = shared_prefix.layers[module.layer_idx]
    query, key, value, prefix_keys, prefix_values = _one_dtype(query, key, value, layer.keys, layer.values)
    b, q = query.shape[0], query.shape[2]
    allowed = _suffix_allowed(attention_mask, b, q, query.device)  # (b, q, q)
    kernel = lse_kernel(query.device)
    if kernel is not None:
        needed = _needed(allowed, shared_prefix, module.layer_idx)
        return _merged(kernel, query, key, value, prefix_keys, prefix_values, allowed, scaling, needed), None
    out = query.new_empty(b, q, query.shape[1], query.shape[3])
    rows = max(1, min(b, ROWS_PER_CHUNK))
    for start in range(0, b, rows):
        r = min(rows, b - start)
        out[start:start + r] = _rows(query[start:start + r], key[start:start + r], value[start:start + r],
                                     prefix_keys, prefix_values, allowed[start:start + r], scaling)
    return out, None


def _one_dtype(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in the dtype sdpa would compute in: autocast's where it is on (a bf16-autocast run over
    float32 weights: the rotary embedding leaves queries and keys float32, values are bfloat16, and a prefix
    cached outside autocast is float32), else the query's.  The aten kernel below does not cast by itself."""
    device = tensors[0].device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else tensors[0].dtype
    return [t.to(dtype) for t in tensors]


def lse_kernel(device: torch.device):
    """A fused attention kernel that also returns the log-sum-exp of its scores, or None: torch's CPU
    flash-attention op.  (CUDA's kernels return it too, but under other signatures that no test here can
    run; there the stacked path below is used.)"""
    if device.type != "cpu":
        return None
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _merged(kernel, query, key, value, prefix_keys, prefix_values, allowed, scaling,
            needed: torch.Tensor | None = None) -> torch.Tensor:
    """Prefix and suffix attended separately, merged by their log-sum-exp values: (b, q, heads, d).

    Prefix: every query of the batch against the one copy of the prefix, without a mask -- the g query
    heads that share a key head are stacked with the batch's rows into one sequence per key head, so
    each prefix block is read once for g * b * q queries; with ``needed`` ((b, q) bool) only those
    positions are stacked, the others get their own part alone (see :func:`_needed`).  Suffix: each row
    against its own new keys (causal, padding excluded; few keys).  softmax over prefix ++ suffix = the
    two softmaxes weighted by exp(lse_part - lse_total)."""
    b, h, q, d = query.shape
    kvh = key.shape[1]
    g = h // kvh  # query head i reads key head i // g (transformers' repeat_kv)
    stacked = query.reshape(b, kvh, g, q, d).permute(1, 2, 0, 3, 4).reshape(kvh, g, b * q, d)
    picked = None if needed is None or bool(needed.all()) else needed.reshape(-1).nonzero().squeeze(1)
    if picked is not None:
        stacked = stacked.index_select(2, picked)
    n = stacked.shape[2]
    out, lse = kernel(stacked.reshape(1, kvh, g * n, d), prefix_keys, prefix_values, scale=scaling)
    pre_out, pre_lse = out.reshape(kvh, g, n, d), lse.reshape(kvh, g, n)
    if picked is not None:  # the others weigh 0: exp(-inf - lse_total)
        pre_out = query.new_zeros(kvh, g, b * q, d).index_copy_(2, picked, pre_out)
        pre_lse = lse.new_full((kvh, g, b * q), float("-inf")).index_copy_(2, picked, pre_lse)
    pre_out = pre_out.reshape(kvh, g, b, q, d).permute(2, 0, 1, 3, 4).reshape(b, h, q, d)
    pre_lse = pre_lse.reshape(kvh, g, b, q).permute(2, 0, 1, 3).reshape(b, h, q)
    if g > 1:  # the suffix's keys are few: repeating them per query head costs little
        key, value = key.repeat_interleave(g, dim=1), value.repeat_interleave(g, dim=1)
    bias = torch.zeros(allowed.shape, dtype=query.dtype, device=query.device)
    bias.masked_fill_(~allowed, torch.finfo(query.dtype).min)  # finite: a fully masked row weighs 0 below
    suf_out, suf_lse = kernel(query, key, value, attn_mask=bias[:, None], scale=scaling)
    total = torch.logaddexp(pre_lse, suf_lse)
    out = (pre_out.float() * (pre_lse - total).exp()[..., None]
           + suf_out.float() * (suf_lse - total).exp()[..., None])
    return out.to(query.dtype).transpose(1, 2)


def _needed(allowed: torch.Tensor, cache: SharedPrefixCache, layer_idx: int) -> torch.Tensor:
    """(b, q) bool: the positions whose attention output anything reads.  Padding is not (under the
    model's causal + padding mask a position hides its own key only when it is padding; right-padded
    rows' pads are read by nothing); in the last layer of a forward that wants only each row's answer
    (``cache.answers_only``) only the row's last real position is."""
    real = allowed.diagonal(dim1=1, dim2=2)
    if cache.answers_only and layer_idx == len(cache.layers) - 1:
        return real & (real.cumsum(1) == real.sum(1, keepdim=True))
    return real


def _rows(query, key, value, prefix_keys, prefix_values, allowed, scaling) -> torch.Tensor:
    """Attention of r rows, stacked as one sequence against prefix ++ their new keys: (r, q, heads, d)."""
    r, h, q, d = query.shape
    kvh = key.shape[1]
    stacked_q = query.transpose(0, 1).reshape(1, h, r * q, d)
    keys = torch.cat([prefix_keys, key.transpose(0, 1).reshape(1, kvh, r * q, d)], dim=2)
    values = torch.cat([prefix_values, value.transpose(0, 1).reshape(1, kvh, r * q, d)], dim=2)
    blocks = torch.zeros(r, q, r, q, dtype=torch.bool, device=query.device)
    rows = torch.arange(r, device=query.device)
    blocks[rows, :, rows, :] = allowed  # row i's queries see row i's keys only
    mask = torch.cat([torch.ones(r * q, prefix_keys.shape[2], dtype=torch.bool, device=query.device),
                      blocks.reshape(r * q, r * q)], dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(stacked_q, keys, values, attn_mask=mask[None, None],
                                                           scale=scaling, enable_gqa=h != kvh)
    return out.reshape(h, r, q, d).permute(1, 2, 0, 3)


def _suffix_allowed(attention_mask, b: int, q: int, device) -> torch.Tensor:
    """(b, q, q) bool: which of its row's new keys each query may see -- the last q key columns of the
    model's mask (the prefix columns are all visible), or causal where the model passed no mask."""
    if attention_mask is None:
        return torch.ones(q, q, dtype=torch.bool, device=device).tril().expand(b, q, q)
    mask = attention_mask[..., -q:]
    if mask.dtype != torch.bool:  # additive: 0 where visible, a large negative number where not
        mask = mask == 0
    return mask[:, 0].expand(b, q, q)


_registered = False


def register() -> None:
    """Make ``NAME`` an attention implementation transformers knows (once per process)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


@contextmanager
def enabled(model_config):
    """The model computes attention with :func:`attention` inside the block (sdpa where no prefix is given)."""
    register()
    before = model_config._attn_implementation
    model_config._attn_implementation = NAME
    try:
        yield
    finally:
        model_config._attn_implementation = before
