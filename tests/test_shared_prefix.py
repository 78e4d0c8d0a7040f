"""Shared-prefix attention: the batch's queries meet one copy of the cached prefix, exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptbench import shared_prefix
from adaptbench.models import load_model
from adaptbench.scoring import PrefixCache, lm_parts, score

from .conftest import save_tiny_model
from .test_scoring import TOL, _encoded, rte  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def models(tiny_models, tokenizer, tmp_path_factory):
    """The tiny OPT / Llama (GQA) / GPT-2 models and a Llama with larger weights (sharper, context-dependent)."""
    sharp = save_tiny_model("llama", tokenizer, tmp_path_factory.mktemp("sharp") / "llama", init_std=0.4)
    return {**tiny_models, "sharp-llama": sharp}


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2", "sharp-llama"])
def test_shared_prefix_attention_equals_the_expanded_and_full_paths(models, rte, arch, monkeypatch):
    loaded = load_model(models[arch])
    enc, ctx, queries = _encoded(loaded, rte)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    assert shared_prefix.unsupported(loaded.model.config) is None
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
    assert reason in shared_prefix.unsupported(config)
