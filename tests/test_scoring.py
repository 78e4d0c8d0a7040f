"""Verbalizer scoring: the cached-prefix, batched path equals the full-context path.

Tolerance: float32 on CPU, |delta log p| < 1e-4 per label (the two paths differ only in the order of
floating-point reductions over the same tokens); predicted labels identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptbench.config.schema import PromptSpec
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.scoring.core import PrefixCache, answer_hidden, pad_right, score
from adaptbench.models.interface import lm_parts
from adaptbench.data import eval_examples, get_task, train_pool

TOL = 1e-4


@pytest.fixture(scope="module")
def rte(data_dir):
    task = get_task("rte")
    pool = train_pool(task, data_dir)
    evals, _ = eval_examples(task.validation, data_dir, max_examples=24, seed=0)
    return task, few_shot_sample(pool, 8, seed=0, n_labels=2), evals


def _encoded(loaded, rte):
    task, sample, evals = rte
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    return (enc, *enc.icl_inputs(sample, evals))


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_cached_batched_equals_full_context(tiny_models, rte, arch):
    loaded = load_model(tiny_models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    assert len(ctx) > 300 and len({len(q) for q in queries}) > 5  # a real context, ragged queries
    parts = lm_parts(loaded.model)
    pad = loaded.tokenizer.pad_token_id
    full = score(parts, queries, enc.label_token_ids, pad, prefix_ids=ctx, batch_size=1)
    cache = PrefixCache.encode(parts, ctx)
    for bs in (1, 5, 24):
        cached = score(parts, queries, enc.label_token_ids, pad, prefix_cache=cache, batch_size=bs)
        np.testing.assert_array_equal(cached.predictions, full.predictions)
        assert np.abs(cached.label_logprobs - full.label_logprobs).max() < TOL
        assert np.abs(cached.vocab_logprobs - full.vocab_logprobs).max() < TOL
    assert cached.tokens == sum(map(len, queries))  # the prefix is not re-counted per query
    assert full.tokens == sum(map(len, queries)) + len(queries) * len(ctx)


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_a_cache_extended_from_a_shared_start_equals_encoding_at_once(tiny_models, rte, arch):
    """CD's leave-one-out contexts reuse the keys/values of the tokens they share: a truncated cache
    extended by the rest is the cache of the whole prefix, and queries score the same against it."""
    loaded = load_model(tiny_models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    whole = PrefixCache.encode(parts, ctx)
    other = PrefixCache.encode(parts, ctx[:100] + ctx[-50:])  # shares the first 100 tokens only
    rebuilt = other.truncated(100).extended(parts, ctx[100:])
    assert rebuilt.length == whole.length == len(ctx)
    for (k1, v1), (k2, v2) in zip(whole.layers, rebuilt.layers):
        assert (k1 - k2).abs().max() < TOL and (v1 - v2).abs().max() < TOL
    assert (whole.last_hidden - rebuilt.last_hidden).abs().max() < TOL
    a = score(parts, queries, enc.label_token_ids, pad, prefix_cache=whole, batch_size=8)
    b = score(parts, queries, enc.label_token_ids, pad, prefix_cache=rebuilt, batch_size=8)
    np.testing.assert_array_equal(a.predictions, b.predictions)
    assert np.abs(a.vocab_logprobs - b.vocab_logprobs).max() < TOL


@pytest.mark.parametrize("arch", ["opt", "llama"])
def test_verbalizer_logits_equal_lm_head_logits(tiny_models, rte, arch):
    """Scoring from hidden state x head rows == the model's own full-vocabulary logits at that position."""
    loaded = load_model(tiny_models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    parts = lm_parts(loaded.model)
    seqs = [ctx + q for q in queries[:4]]
    s = score(parts, seqs, enc.label_token_ids, loaded.tokenizer.pad_token_id, batch_size=4)
    with torch.inference_mode():
        for i, seq in enumerate(seqs):
            logits = loaded.model(input_ids=torch.tensor([seq])).logits[0, -1]
            np.testing.assert_allclose(s.logits[i], logits[enc.label_token_ids].numpy(), atol=1e-4)
            assert abs(s.log_norm[i] - torch.logsumexp(logits, -1).item()) < 1e-4


def test_right_padding_leaves_real_positions_alone(tiny_models, rte):
    loaded = load_model(tiny_models["llama"])
    _, ctx, queries = _encoded(loaded, rte)
    parts = lm_parts(loaded.model)
    with torch.inference_mode():
        alone = answer_hidden(parts, [queries[0]], 0)
        batched = answer_hidden(parts, [queries[0], queries[1] + [5] * 30], 0)
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)
    ids, mask = pad_right([[1, 2, 3], [4]], pad_id=9)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


# Half-precision rounding of tiny OPT's label log-probs, measured against float32 on the 24 RTE queries
# (2026-12-05): cached vs full 1.3e-3 (bf16, 8 mantissa bits) and 1.6e-4 (fp16, 11 bits), each path vs
# float32 the same.  The tolerances are 3x that; a prefix one token short moves them by 0.15.
HALF_TOL = {"bfloat16": 4e-3, "float16": 5e-4}


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_cached_matches_full(tiny_models, rte, dtype):
    loaded = load_model(tiny_models["opt"], dtype=dtype)
    enc, ctx, queries = _encoded(loaded, rte)
    parts = lm_parts(loaded.model)
    pad = loaded.tokenizer.pad_token_id
    full = score(parts, queries, enc.label_token_ids, pad, prefix_ids=ctx, batch_size=4)
    cached = score(parts, queries, enc.label_token_ids, pad, prefix_cache=PrefixCache.encode(parts, ctx), batch_size=4)
    f32 = load_model(tiny_models["opt"])
    reference = score(lm_parts(f32.model), queries, enc.label_token_ids, pad, prefix_ids=ctx, batch_size=4)
    tol = HALF_TOL[dtype]
    assert np.abs(cached.label_logprobs - full.label_logprobs).max() < tol
    assert np.abs(cached.label_logprobs - reference.label_logprobs).max() < tol
    # the tolerance can tell a wrong prefix: one token short is far outside it
    short = score(parts, queries, enc.label_token_ids, pad, prefix_cache=PrefixCache.encode(parts, ctx[:-1]),
                  batch_size=4)
    assert np.abs(short.label_logprobs - full.label_logprobs).max() > 10 * tol
