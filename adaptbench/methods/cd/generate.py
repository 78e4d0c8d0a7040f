"""Teacher-sampled continuations of the distillation inputs (``cd.generate``; Snell et al., 2022).

Distilling only on the given inputs teaches the student what follows *them*; sampling continuations
from the teacher (which reads the context) and distilling on input + continuation also covers the
text the context makes likely -- for a user turn, the teacher's own replies.  The continuation is
sampled from the teacher's full distribution (no top-k/top-p truncation) at ``temperature``; the
context is encoded once and its KV cache copied into each generation.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from ...scoring import PrefixCache, lm_parts


def _cache_copy(cache: PrefixCache) -> DynamicCache:
    """A fresh DynamicCache holding the prefix (generation appends to it, the prefix stays reusable)."""
    out = DynamicCache()
    for i, (keys, values) in enumerate(cache.layers):
        out.update(keys.clone(), values.clone(), i)
    return out


def continuations(model, tokenizer, context_ids: list[int], inputs: list[list[int]], cache: PrefixCache | None,
                  n: int, max_new_tokens: int, temperature: float, seed: int) -> list[list[int]]:
    """``n`` sampled continuations (token ids, ending at EOS if one is sampled) per input, in order
    (input 0's n, then input 1's ...); seeded per input and sample, so a rerun draws the same text."""
    device = next(model.parameters()).device
    cache_kwarg = lm_parts(model).cache_kwarg  # generate renamed past_key_values to cache with forward
    out = []
    with torch.inference_mode():
        for i, x in enumerate(inputs):
            ids = torch.tensor([list(context_ids) + list(x)], device=device)
            for j in range(n):
                torch.manual_seed(seed * 1_000_003 + i * 101 + j)
                kwargs = {cache_kwarg: _cache_copy(cache)} if cache is not None else {}
                gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                                     temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                     pad_token_id=tokenizer.pad_token_id, **kwargs)
                out.append(gen[0, ids.shape[1]:].tolist())
    return out
