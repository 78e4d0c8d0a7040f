"""Shared-prefix attention: the batch's queries meet one copy of the cached prefix, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptbench.models.capabilities import shared_prefix_unsupported
from adaptbench.models.interface import lm_parts
from adaptbench.models.loading import load_model
from adaptbench.scoring import shared_prefix
from adaptbench.scoring.core import PrefixCache, score

from .conftest import save_tiny_model
from .test_scoring import TOL, _encoded, rte  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def models(tiny_models, tokenizer, tmp_path_factory):
    """The tiny OPT / Llama (GQA) / GPT-2 models and a Llama with larger weights (sharper, context-dependent)."""
    sharp = save_tiny_model("llama", tokenizer, tmp_path_factory.mktemp("sharp") / "llama", init_std=0.4)
    return {**tiny_models, "sharp-llama": sharp}


@pytest.mark.parametrize("kernel", ["merged", "stacked"])
@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2", "sharp-llama"])
def test_shared_prefix_attention_equals_the_expanded_and_full_paths(models, rte, arch, kernel, monkeypatch):
    """Both ways: prefix and suffix merged by log-sum-exp (CPU) and rows stacked under a mask (elsewhere)."""
    if kernel == "stacked":
        monkeypatch.setattr(shared_prefix, "lse_kernel", lambda device: None)
    else:
        assert shared_prefix.lse_kernel(torch.device("cpu")) is not None
    loaded = load_model(models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    assert shared_prefix_unsupported(loaded.model.config) is None
    calls = []
    original = shared_prefix.attention

    def counted(*args, **kwargs):
        calls.append(kwargs.get("shared_prefix") is not None)
        return original(*args, **kwargs)

    monkeypatch.setattr(shared_prefix, "attention", counted)
    monkeypatch.setattr(shared_prefix, "_registered", False)  # register the counting wrapper
    full = score(parts, queries, enc.label_token_ids, pad, prefix_ids=ctx, batch_size=4, full_vocab=True)
    expanded = PrefixCache.encode(parts, ctx, shared=False)
    shared = PrefixCache.encode(parts, ctx)  # by default wherever the model's attention allows
    assert shared.shared and shared.truncated(10).shared and not expanded.shared
    for bs in (1, 3, 8, 32):
        a = score(parts, queries, enc.label_token_ids, pad, prefix_cache=expanded, batch_size=bs, full_vocab=True)
        b = score(parts, queries, enc.label_token_ids, pad, prefix_cache=shared, batch_size=bs, full_vocab=True)
        for other in (a, full):
            np.testing.assert_array_equal(b.predictions, other.predictions)
            assert np.abs(b.label_logprobs - other.label_logprobs).max() <= TOL
            assert np.abs(b.vocab_logprobs - other.vocab_logprobs).max() <= TOL
    assert calls and all(calls)  # the shared path ran, in every layer call
    assert loaded.model.config._attn_implementation != shared_prefix.NAME  # switched back after scoring


def test_without_a_prefix_the_registered_function_is_sdpa(models, rte):
    """Inside the block, a forward without a prefix (training, generation) computes plain attention."""
    loaded = load_model(models["llama"])
    _, ctx, _ = _encoded(loaded, rte)
    ids = torch.tensor([ctx[:50]])
    with torch.no_grad():
        plain = loaded.model(input_ids=ids).logits
        with shared_prefix.enabled(loaded.model.config):
            inside = loaded.model(input_ids=ids).logits
    assert (plain - inside).abs().max() <= 1e-5


@pytest.mark.parametrize("change,reason", [
    ({"sliding_window": 4096}, "sliding-window attention"),
    ({"attn_logit_softcapping": 50.0}, "soft-capping"),
])
def test_attention_it_cannot_decompose_is_named(models, change, reason):
    config = load_model(models["llama"]).model.config
    for key, value in change.items():
        setattr(config, key, value)
    assert reason in shared_prefix_unsupported(config)


def test_merging_by_log_sum_exp_equals_one_attention_over_prefix_and_suffix():
    """Grouped-query heads (9 query heads on 3 key heads), ragged rows, a row whose own keys are all
    hidden (it weighs 0: the prefix alone): the merge equals attention over the concatenated keys."""
    gen = torch.Generator().manual_seed(0)
    b, h, kvh, q, d, L = 4, 9, 3, 5, 16, 37
    query, key, value = (torch.randn(b, n, q, d, generator=gen) for n in (h, kvh, kvh))
    prefix_keys, prefix_values = (torch.randn(1, kvh, L, d, generator=gen) for _ in range(2))
    allowed = torch.ones(q, q, dtype=torch.bool).tril().repeat(b, 1, 1)
    allowed[1, :, 3:] = False  # a right-padded row: its last two keys are padding
    allowed[2] = False  # nothing of its own visible
    kernel = shared_prefix.lse_kernel(torch.device("cpu"))
    merged = shared_prefix._merged(kernel, query, key, value, prefix_keys, prefix_values, allowed, None)
    keys = torch.cat([prefix_keys.expand(b, -1, -1, -1), key], dim=2).repeat_interleave(h // kvh, dim=1)
    values = torch.cat([prefix_values.expand(b, -1, -1, -1), value], dim=2).repeat_interleave(h // kvh, dim=1)
    mask = torch.cat([torch.ones(b, q, L, dtype=torch.bool), allowed], dim=2)[:, None]
    expected = torch.nn.functional.scaled_dot_product_attention(query, keys, values, attn_mask=mask)
    assert merged.shape == (b, q, h, d)
    assert (merged - expected.transpose(1, 2)).abs().max() <= 1e-5


def test_positions_nothing_reads_skip_the_prefix_and_the_others_are_unchanged():
    """Padding (its own key hidden) and, in a forward that wants answers only, every position but each
    row's last real one in the last layer skip the prefix; the positions read are as without skipping."""
    gen = torch.Generator().manual_seed(1)
    b, h, kvh, q, d, L = 3, 6, 2, 5, 8, 23
    query, key, value = (torch.randn(b, n, q, d, generator=gen) for n in (h, kvh, kvh))
    prefix_keys, prefix_values = (torch.randn(1, kvh, L, d, generator=gen) for _ in range(2))
    allowed = torch.ones(q, q, dtype=torch.bool).tril().repeat(b, 1, 1)
    allowed[0, :, 2:] = False  # row 0: 2 real tokens, 3 pads
    allowed[2, :, 4:] = False  # row 2: 4 real tokens
    real = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]], dtype=torch.bool)
    answers = torch.zeros(b, q, dtype=torch.bool)
    answers[0, 1] = answers[1, 4] = answers[2, 3] = True
    cache = shared_prefix.SharedPrefixCache([None] * 4, answers_only=True)
    assert torch.equal(shared_prefix._needed(allowed, cache, 2), real)
    assert torch.equal(shared_prefix._needed(allowed, cache, 3), answers)
    assert torch.equal(shared_prefix._needed(allowed, shared_prefix.SharedPrefixCache([None] * 4), 3), real)
    kernel = shared_prefix.lse_kernel(torch.device("cpu"))
    every = shared_prefix._merged(kernel, query, key, value, prefix_keys, prefix_values, allowed, None)
    for needed in (real, answers):
        some = shared_prefix._merged(kernel, query, key, value, prefix_keys, prefix_values, allowed, None, needed)
        assert torch.isfinite(some).all()
        assert (some[needed] - every[needed]).abs().max() <= 1e-6
        assert (some[~needed] - every[~needed]).abs().max() > 1e-3  # those really skipped the prefix


def test_on_cpu_auto_batches_are_larger_where_the_prefix_is_shared(models, rte):
    """A batch of 32 reads the shared prefix once for all its queries; the expanded path stays at 8."""
    from adaptbench.scoring.context import LocalContextScorer

    loaded = load_model(models["llama"])
    enc, ctx, _ = _encoded(loaded, rte)
    parts = lm_parts(loaded.model)
    scorer = LocalContextScorer(loaded, enc, {"c": ""}, label="icl", batch_size="auto", progress=None, info={})
    for shared, expected in ((True, 32), (False, 8)):
        cache = PrefixCache.encode(parts, ctx, shared=shared)
        assert scorer._batch_size(cache, len(ctx), 20) == expected


@pytest.mark.parametrize("arch", ["llama", "opt"])
def test_shared_prefix_under_bf16_autocast_matches_the_expanded_path(models, rte, arch):
    """A training run's float32 weights under bf16 autocast (its teacher pass, its held-out measures): the
    rotary embedding leaves queries and keys float32 and values bfloat16, and the CPU kernel does not cast
    by itself -- the shared path computes in autocast's dtype as sdpa would, and agrees with it."""
    loaded = load_model(models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared = PrefixCache.encode(parts, ctx)
        a = score(parts, queries, enc.label_token_ids, pad, prefix_cache=shared, batch_size=8)
        b = score(parts, queries, enc.label_token_ids, pad, prefix_cache=PrefixCache.encode(parts, ctx, shared=False),
                  batch_size=8)
    assert shared.shared
    assert np.abs(a.label_logprobs - b.label_logprobs).max() <= 0.05  # bfloat16's rounding, not a wrong result
    assert (a.predictions == b.predictions).mean() >= 0.9
