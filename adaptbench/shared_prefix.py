"""Attention to a shared prefix once per batch, not once per query (Hydragen; FlashInfer's cascade attention).

ICL scores every query after the same demonstrations, and the CD teacher every input after the same
context.  With a KV cache of that prefix, the usual path still hands each row of a batch its own
expanded copy of the prefix keys and values in every layer (and, for grouped-query attention, a copy
per query head): at an 8k-token prefix that is most of the work per query token, and all of it memory
traffic.  Attention decomposes exactly over a split of the keys:

    softmax over (prefix ++ suffix)  =  weighted merge of the softmax over the prefix and over the suffix,
    weights exp(lse_prefix - lse) and exp(lse_suffix - lse), lse = logaddexp(lse_prefix, lse_suffix)

so here the queries of *all* rows of the batch meet the single copy of the prefix keys in one matrix
product (stacked as one sequence: every query sees the whole prefix, no mask), each row meets its own
new keys in the small causal part, and the two are merged with their log-sum-exp values.  Grouped-query
heads share their key head's product (no repeated prefix keys).

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
from transformers.cache_utils import DynamicLayer

NAME = "adaptbench_shared_prefix"
ALIBI_MODELS = {"bloom", "mpt", "falcon", "baichuan", "jais"}
#: Batch rows whose prefix scores are computed at once: bounds the (heads x rows x queries x prefix)
#: score tensor (the prefix part of attention is chunked over the batch, exactly).
ROWS_PER_CHUNK = 16


def unsupported(config) -> str | None:
    """Why this model's attention cannot take the shared-prefix path (None: it can)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(config, "layer_types", None) or ()
    if any("sliding" in str(t) for t in layer_types) or (
            getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)):
        return "sliding-window attention"
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    if getattr(config, "alibi", False) or config.model_type in ALIBI_MODELS:
        return "ALiBi position biases"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", NAME, None):
        return f"attention implementation {config._attn_implementation!r}"
    return None


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


def attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling: float | None = None,
              shared_prefix=None, **kwargs):
    """query (b, heads, q, d); key/value: the new states (b, kv_heads, q, d); the prefix in ``shared_prefix``
    (the cache whose layer ``module.layer_idx`` holds it).  Returns (b, q, heads, d), as sdpa does."""
    if shared_prefix is None:  # any other forward of the model (training, generation): plain sdpa
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layer = shared_prefix.layers[module.layer_idx]
    pk, pv = layer.keys[0], layer.values[0]  # (kv_heads, P, d)
    b, h, q, d = query.shape
    kvh = key.shape[1]
    g = h // kvh
    scale = d ** -0.5 if scaling is None else scaling
    # prefix: every query of every row against the one copy of the prefix, per key head
    grouped = query.reshape(b, kvh, g * q, d)  # query heads of one key head next to each other
    out_p = torch.empty_like(grouped)
    lse_p = grouped.new_empty(b, kvh, g * q)
    for start in range(0, b, ROWS_PER_CHUNK):
        rows = grouped[start:start + ROWS_PER_CHUNK]  # (r, kvh, gq, d)
        stacked = rows.transpose(0, 1).reshape(kvh, -1, d)  # (kvh, r * gq, d): one sequence per key head
        scores = torch.matmul(stacked, pk.transpose(-1, -2)) * scale  # (kvh, r * gq, P)
        lse = torch.logsumexp(scores, dim=-1, keepdim=True)
        out = torch.matmul(torch.exp(scores - lse), pv)  # (kvh, r * gq, d)
        r = rows.shape[0]
        out_p[start:start + r] = out.reshape(kvh, r, g * q, d).transpose(0, 1)
        lse_p[start:start + r] = lse.reshape(kvh, r, g * q).transpose(0, 1)
    # suffix: each row against its own new keys, causal and padding as the model's mask says
    ks = key.repeat_interleave(g, dim=1) if g > 1 else key
    vs = value.repeat_interleave(g, dim=1) if g > 1 else value
    scores = torch.matmul(query, ks.transpose(-1, -2)) * scale + _suffix_bias(attention_mask, query, q)
    lse_s = torch.logsumexp(scores, dim=-1, keepdim=True)  # (b, h, q, 1)
    out_s = torch.matmul(torch.exp(scores - lse_s).nan_to_num(0.0), vs)
    # merge with the log-sum-exp weights
    lse_p = lse_p.reshape(b, h, q, 1)
    total = torch.logaddexp(lse_p, lse_s)
    merged = torch.exp(lse_p - total) * out_p.reshape(b, h, q, d) + torch.exp(lse_s - total).nan_to_num(0.0) * out_s
    return merged.transpose(1, 2).contiguous(), None


def _suffix_bias(attention_mask, query: torch.Tensor, q: int) -> torch.Tensor:
    """Additive (b or 1, 1, q, q) bias of the suffix keys: the last q key columns of the model's mask
    (the prefix columns are all visible), or causal where the model passed no mask."""
    if attention_mask is None:
        causal = torch.ones(q, q, dtype=torch.bool, device=query.device).tril()
        return torch.zeros(q, q, dtype=query.dtype, device=query.device).masked_fill(~causal, float("-inf"))
    mask = attention_mask[..., -q:]
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(~mask, float("-inf"))
    return mask.to(query.dtype)


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
