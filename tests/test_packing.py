"""Packed training batches give the model exactly what padded batches give it, with fewer positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adaptbench.models.loading import load_model
from adaptbench.training.packing import mask_dtype_for, pack, packing_works
from adaptbench._util.progress import make_progress
from adaptbench.scoring.core import last_hidden, pad_right
from adaptbench.models.interface import lm_parts
from adaptbench.training.settings import TrainSettings
from adaptbench.training.loop import TrainItem, train

SEQS = [list(range(5, 5 + n)) for n in (7, 3, 12, 5, 4, 9, 1)]


def test_rows_and_positions():
    p = pack(SEQS, pad_id=0)
    assert p["input_ids"].shape == (4, 12) and p["n_tokens"] == 41  # 84 positions padded, 48 packed
    for i, seq in enumerate(SEQS):
        r, c = p["ends"][i].tolist()
        n = len(seq)
        assert p["input_ids"][r, c - n + 1: c + 1].tolist() == seq
        assert p["position_ids"][r, c - n + 1: c + 1].tolist() == list(range(n))
        mask = p["attention_mask"][r, 0]
        assert mask[c, c - n + 1: c + 1].all() and mask[c].sum() == n  # sees itself, nothing else


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
@pytest.mark.parametrize("eager", [False, True])
def test_packed_hidden_states_equal_padded(tiny_models, arch, eager):
    loaded = load_model(tiny_models[arch])
    if eager:
        loaded.model.config._attn_implementation = "eager"
    parts = lm_parts(loaded.model)
    ids, mask = pad_right(SEQS, 0)
    p = pack(SEQS, 0, mask_dtype_for(loaded.model))
    with torch.no_grad():
        ref = last_hidden(parts, ids, mask, use_cache=False)
        got = last_hidden(parts, p["input_ids"], p["attention_mask"], p["ends"], position_ids=p["position_ids"],
                          use_cache=False)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert packing_works(loaded.model)


def test_packed_training_follows_padded_training(tiny_models, data_dir):
    from adaptbench.methods.pbft import VerbalizerModel
    from adaptbench.training.policies import apply_policy

    losses = {}
    for packed in (False, True):
        loaded = load_model(tiny_models["llama"])
        model = VerbalizerModel(loaded.model, [10, 11])
        apply_policy(model, "full")
        items = [TrainItem([(3 * i + k) % 500 + 3 for k in range(5 + 9 * i % 40)], torch.tensor(i % 2))
                 for i in range(12)]
        settings = TrainSettings(max_steps=4, batch_size=6, lr=1e-3, warmup_ratio=0.0, schedule="constant")
        log = train(model, items, settings, loss_fn=torch.nn.functional.cross_entropy, pad_id=0, seed=0,
                    device=loaded.device, progress=make_progress(False), packed=packed)
        losses[packed] = (log.losses, log.tokens, log.padded_tokens)
    np.testing.assert_allclose(losses[True][0], losses[False][0], atol=1e-4)
    assert losses[True][1] == losses[False][1]  # the same real tokens
    assert losses[True][2] < losses[False][2]  # fewer positions computed
