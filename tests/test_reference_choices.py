"""The reference study's choices are offered and named: PBFT's full-vocabulary loss, vanilla's MLP head,
``preset: reference``; and verbalizer scores come from the model's own output path (LoRA on the LM head,
final-logit softcapping)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adaptbench.config.schema import PromptSpec
from adaptbench.config.expand import load_sweep
from adaptbench.errors import ConfigError
from adaptbench.methods.pbft import PBFT, VerbalizerModel
from adaptbench.methods.vanilla import classification_head
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.models.interface import lm_parts
from adaptbench.scoring.core import pad_right, score
from adaptbench.training.policies import LoraSettings
from adaptbench.methods.pbft import PBFTSettings
from adaptbench.training.policies import apply_policy

from .conftest import REPO, write_config
from .test_finetune import _train
from .test_run import _records, _run


@pytest.fixture(scope="module")
def rte(data_dir):
    from adaptbench.data import get_task, train_pool

    task = get_task("rte")
    return task, few_shot_sample(train_pool(task, data_dir), 8, seed=0, n_labels=2)


def _encoder(loaded, task):
    return PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)


def test_pbft_vocab_loss_is_the_reference_cross_entropy(tiny_models, rte):
    """pbft.loss: vocab == cross-entropy of the model's own full logits at the last token, target the gold
    verbalizer token (OPTWithLMClassifier); the default normalises over the verbalizers only."""
    task, sample = rte
    loaded = load_model(tiny_models["opt"])
    enc = _encoder(loaded, task)
    ids, mask = pad_right([enc.query_ids(ex) for ex in sample], loaded.tokenizer.pad_token_id)
    gold = torch.tensor([ex.label for ex in sample])
    last = loaded.model(input_ids=ids, attention_mask=mask).logits[torch.arange(len(sample)), mask.sum(1) - 1]
    reference = nn.functional.cross_entropy(last, torch.tensor(enc.label_token_ids)[gold])
    losses = {}
    for kind in ("vocab", "verbalizer"):
        method = PBFT()
        method.vocab_loss, method.label_ids = kind == "vocab", torch.tensor(enc.label_token_ids)
        model = VerbalizerModel(loaded.model, enc.label_token_ids, vocab_in_training=kind == "vocab").train()
        losses[kind] = method.loss(model(ids, mask), gold).item()
    assert losses["vocab"] == pytest.approx(reference.item(), abs=1e-5)
    assert losses["verbalizer"] < losses["vocab"]  # the verbalizers' share of the mass is renormalised


def test_mlp_head_is_the_reference_classification_head():
    head = classification_head(64, 3, "mlp", init_std=0.02, dropout=0.1)
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear] and head[2].p == 0.1
    assert head[0].weight.shape == (64, 64) and head[3].weight.shape == (3, 64)
    assert float(head[0].bias.detach().abs().sum()) == 0 and abs(float(head[0].weight.detach().std()) - 0.02) < 0.003
    assert isinstance(classification_head(64, 3, "linear", 0.02, 0.1), nn.Linear)


def test_preset_reference_fills_unset_settings(tmp_path):
    base = "name: t\nmodel: m\ntask: rte\nshots: 16\ninclude: [{method: pbft}, {method: vanilla}]\n"
    _, runs = load_sweep(write_config(tmp_path, "preset: reference\n" + base))
    pbft, vanilla = runs
    assert pbft.pbft.loss == "vocab" and vanilla.vanilla.head == "mlp"
    assert pbft.train.lr == 1e-5 and pbft.train.epochs == 40 and pbft.train.batch_size == 32
    assert pbft.train.eval_every == "epoch" and pbft.prompt.preset == "minimal"
    _, runs = load_sweep(write_config(tmp_path, "preset: reference\npbft: {loss: verbalizer}\n" + base))
    assert runs[0].pbft.loss == "verbalizer"  # a config's own value wins
    _, runs = load_sweep(write_config(tmp_path, base))
    assert runs[0].pbft.loss == "verbalizer" and runs[1].vanilla.head == "linear"  # adaptbench's defaults
    with pytest.raises(ConfigError, match="preset"):
        load_sweep(write_config(tmp_path, "preset: paper\n" + base))


def test_study_configs_say_which_choices_they_use():
    for name in ("pbft", "vanilla", "peft"):
        path = REPO / "configs" / "study" / f"{name}.yaml"
        assert "preset: reference" in path.read_text()
        _, runs = load_sweep(str(path))
        assert runs[0].train.lr == 1e-5
    assert "peft's LoRA" in (REPO / "configs" / "study" / "peft.yaml").read_text()


def test_vocab_loss_and_mlp_head_run_end_to_end(tmp_path, data_dir, tiny_models):
    text = f"""# adaptbench run sweep.yaml
name: t
model: {tiny_models["llama"]}
task: rte
include: [{{method: pbft, pbft: {{loss: vocab}}}}, {{method: vanilla, vanilla: {{head: mlp}}}}]
trainable: full
shots: 4
data_seeds: [0]
train: {{max_steps: 3, batch_size: 4, lr: 1.0e-3}}
eval: {{max_examples: 4}}
runtime: {{progress: false}}
"""
    assert _run(tmp_path, data_dir, text).exit_code == 0
    recs = {r["spec"]["method"]: r for r in _records(tmp_path)}
    assert {r["status"] for r in recs.values()} == {"ok"}
    assert recs["pbft"]["method_info"]["pbft_loss"] == "vocab" and recs["vanilla"]["method_info"]["head"] == "mlp"
    assert recs["vanilla"]["method_info"]["trainable_params"] > 64 * 64  # the head's dense layer trains too


def test_lora_on_the_lm_head_trains_through_the_scores(tiny_models, rte):
    """Verbalizer logits go through an adapted LM head: its LoRA matrices get gradients and change."""
    task, sample = rte
    loaded = load_model(tiny_models["opt"])
    enc = _encoder(loaded, task)
    model = VerbalizerModel(loaded.model, enc.label_token_ids)
    apply_policy(model, "lora", lora=LoraSettings(target_modules=["q_proj", "v_proj", "lm_head"]))
    head_lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lm_head" in n and "lora_" in n}
    assert head_lora
    from adaptbench.training.loop import TrainItem

    items = [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample[:4]]
    _train(model, items, loaded, steps=3)
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n].detach(), before) for n, before in head_lora.items())


def test_final_logit_softcapping_is_applied(tokenizer):
    """Gemma 2 caps its logits (tanh(z / c) * c) after the head: scores equal the model's own logits."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=0.5,
                       initializer_range=0.5, pad_token_id=0, bos_token_id=0, eos_token_id=1)
    model = Gemma2ForCausalLM(cfg).eval()
    seqs = [[5, 17, 99, 3], [8, 9, 10]]
    s = score(lm_parts(model), seqs, [11, 12], pad_id=0, batch_size=2, full_vocab=True)
    with torch.no_grad():
        own = [model(input_ids=torch.tensor([q])).logits[0, -1] for q in seqs]
    for i, logits in enumerate(own):
        np.testing.assert_allclose(s.logits[i], logits[[11, 12]].numpy(), atol=1e-5)
        np.testing.assert_allclose(s.vocab[i], logits.numpy(), atol=1e-5)
    assert np.abs(s.vocab).max() <= 0.5 + 1e-6  # capped


def test_pbft_settings_are_validated():
    with pytest.raises(ValueError):
        PBFTSettings(loss="full")
