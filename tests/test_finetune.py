"""Fine-tuning: every method x policy trains the intended parameters and only those, on OPT and Llama."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from adaptbench.config.schema import PromptSpec
from adaptbench.methods.pbft import VerbalizerModel
from adaptbench.methods.vanilla import HeadModel
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.training.policies import BitfitSettings, LoraSettings
from adaptbench.training.settings import TrainSettings
from adaptbench.training.policies import apply_policy
from adaptbench.training.loop import TrainItem, train
from adaptbench._util.progress import make_progress

from .conftest import with_settings
from .test_run import _records, _run

# Token and position embeddings and the LM head, by module name (OPT, Llama, GPT-2): BitFit leaves them frozen.
EMBEDDING_MODULES = ("embed_tokens", "embed_positions", "wte", "wpe", "lm_head")
CASES = [("pbft", "full"), ("pbft", "bitfit"), ("pbft", "lora"),
         ("vanilla", "full"), ("vanilla", "head"), ("vanilla", "bitfit"), ("vanilla", "lora")]


@pytest.fixture(scope="module")
def rte_sample(data_dir):
    from adaptbench.data import get_task, train_pool

    task = get_task("rte")
    return task, few_shot_sample(train_pool(task, data_dir), 8, seed=0, n_labels=2)


def _task_model(method, loaded, enc):
    if method == "pbft":
        return VerbalizerModel(loaded.model, enc.label_token_ids)
    torch.manual_seed(0)
    return HeadModel(loaded.model, 2)


def _train(model, items, loaded, steps=60, lr=3e-3):
    settings = TrainSettings(max_steps=steps, batch_size=4, lr=lr, warmup_ratio=0.0, schedule="constant")
    return train(model, items, settings, loss_fn=torch.nn.functional.cross_entropy,
                 pad_id=loaded.tokenizer.pad_token_id, seed=0, device=loaded.device, progress=make_progress(False))


@pytest.mark.parametrize("arch", ["opt", "llama"])
@pytest.mark.parametrize("method,policy", CASES)
def test_policy_trains_intended_parameters_and_loss_drops(tiny_models, rte_sample, arch, method, policy):
    task, sample = rte_sample
    loaded = load_model(tiny_models[arch])
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    model = _task_model(method, loaded, enc)
    info = apply_policy(model, policy, lora=LoraSettings(), bitfit=BitfitSettings(add_biases=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    # the policy's parameter set, stated independently of the implementation: by the parameters' names
    lm_names = {n for n, _ in model.named_parameters() if n.startswith("lm.")}
    emb = {n for n in lm_names if any(f".{k}." in n for k in EMBEDDING_MODULES)}
    assert emb and emb <= lm_names
    head = {n for n in before if n.startswith("head.")}
    expected = {"full": lm_names | head, "head": head,
                "bitfit": {n for n in lm_names if n.endswith(".bias") and n not in emb} | head,
                "lora": {n for n in lm_names if ".lora_A." in n or ".lora_B." in n} | head}[policy]
    assert trainable == expected and trainable
    if policy == "bitfit":
        assert not trainable & emb
        assert ("added_biases" in info) == (arch == "llama")  # Llama has no biases of its own
    assert info["trainable_params"] == sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert info["total_params"] == sum(p.numel() for p in model.parameters())

    # overfit 4 examples (one full batch per step): the loss must fall well below its start
    items = [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample[:4]]
    log = _train(model, items, loaded)
    assert np.mean(log.losses[-5:]) < 0.6 * np.mean(log.losses[:3]), log.losses
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= trainable
    assert len(changed) >= 0.9 * len(trainable)  # (a few may get no gradient, e.g. an unused bias)


def test_pbft_logits_equal_full_vocabulary_path(tiny_models, rte_sample):
    task, sample = rte_sample
    loaded = load_model(tiny_models["opt"])
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    model = VerbalizerModel(loaded.model, enc.label_token_ids)
    seqs = [enc.query_ids(ex) for ex in sample[:4]]
    from adaptbench.scoring.core import pad_right

    ids, mask = pad_right(seqs, loaded.tokenizer.pad_token_id)
    fast = model(ids, mask)
    full = loaded.model(input_ids=ids, attention_mask=mask).logits  # (batch, seq, vocab)
    last = full[torch.arange(4), mask.sum(1) - 1][:, enc.label_token_ids]
    torch.testing.assert_close(fast, last, atol=1e-5, rtol=1e-5)
    # gradients flow into the verbalizer rows of the (tied) LM head only
    fast.sum().backward()
    grad = loaded.model.get_output_embeddings().weight.grad
    rows = grad.abs().sum(dim=1).nonzero().flatten().tolist()
    assert set(enc.label_token_ids) <= set(rows)


def _ft_config(model: str, extra: str = "") -> str:
    return with_settings(f"""# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
method: pbft
trainable: lora
shots: 8
data_seeds: [0]
train: {{max_steps: 4, batch_size: 4, lr: 1e-3, eval_every: 2, select: last}}
eval: {{max_examples: 10}}
runtime: {{progress: false}}
""", extra)


def test_same_seeds_same_metrics_and_learning_curves(tmp_path, data_dir, tiny_models):
    assert _run(tmp_path, data_dir, _ft_config(tiny_models["llama"], "trainable: [full, lora]\n")).exit_code == 0
    first = {r["run_id"]: (r["metrics"], r["method_info"]["train_losses"]) for r in _records(tmp_path)}
    assert _run(tmp_path, data_dir, _ft_config(tiny_models["llama"], "trainable: [full, lora]\n"),
                "--force").exit_code == 0
    second = {r["run_id"]: (r["metrics"], r["method_info"]["train_losses"]) for r in _records(tmp_path)}
    assert first == second and len(first) == 2
    rec = _records(tmp_path)[0]
    hist = rec["method_info"]["history"]
    assert [h["step"] for h in hist] == [2, 4] and set(hist[0]["metrics"]) == {"rte", "hans"}
    assert rec["method_info"]["selected"] == {"mode": "last", "step": 4, "epoch": 2.0}
    assert rec["metrics"]["rte"]["all"]["accuracy"] == hist[-1]["metrics"]["rte"]["accuracy"]
    assert rec["costs"]["train"]["extra"]["steps"] == 4


@pytest.mark.parametrize("mode", ["best", "oracle"])
def test_model_selection(tmp_path, data_dir, tiny_models, mode):
    text = _ft_config(tiny_models["opt"]).replace("select: last", f"select: {mode}").replace("max_steps: 4",
                                                                                            "max_steps: 6")
    assert _run(tmp_path, data_dir, text.replace("eval_every: 2", "eval_every: 1")).exit_code == 0
    rec = _records(tmp_path)[0]
    hist, sel = rec["method_info"]["history"], rec["method_info"]["selected"]
    key = (lambda h: h["metrics"]["rte"]["accuracy"]) if mode == "best" else (lambda h: h["metrics"]["hans"]["accuracy"])
    best = max(range(len(hist)), key=lambda i: (key(hist[i]), -i))
    assert sel["mode"] == mode and sel["step"] == hist[best]["step"]
    assert rec["metrics"]["rte"]["all"]["accuracy"] == hist[best]["metrics"]["rte"]["accuracy"]


def test_policy_errors_are_clear(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _ft_config(tiny_models["llama"], "trainable: head\n"))
    assert result.exit_code == 2 and "pbft adds no head" in result.output
    result = _run(tmp_path, data_dir, _ft_config(tiny_models["llama"], "trainable: bitfit\n"))
    rec = _records(tmp_path)[0]
    assert rec["status"] == "failed" and "has no bias terms" in rec["reason"] and "bitfit.add_biases" in rec["reason"]
    result = _run(tmp_path, data_dir, _ft_config(tiny_models["opt"], "train: {select: best}\n"))
    assert result.exit_code == 2 and "needs evaluation points" in result.output


def test_nan_loss_fails_the_run_and_the_sweep_goes_on(tmp_path, data_dir, tiny_models, monkeypatch):
    from adaptbench.methods.pbft import PBFT

    monkeypatch.setattr(PBFT, "loss", lambda self, logits, target: logits.sum() * float("nan"))
    text = _ft_config(tiny_models["opt"], "method: [pbft, vanilla]\n")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 1
    recs = {r["spec"]["method"]: r for r in _records(tmp_path)}
    assert recs["pbft"]["status"] == "failed" and "loss became nan at step 1" in recs["pbft"]["reason"]
    assert recs["vanilla"]["status"] == "ok"


def test_saved_weights_load_back(tmp_path, data_dir, tiny_models):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    text = _ft_config(tiny_models["llama"], "trainable: [lora, bitfit, full]\nmethod: vanilla\n"
                                            "bitfit: {add_biases: true}\n")
    text = text.replace("eval_every: 2", "eval_every: end, save: true")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    recs = {r["spec"]["trainable"]: r for r in _records(tmp_path)}
    saved = recs["lora"]["method_info"]["saved"]
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), saved["lora_adapter"])
    assert any("lora_" in n for n, _ in peft.named_parameters())
    assert set(load_file(saved["classifier_head"])) == {"weight", "bias"}
    biases = load_file(recs["bitfit"]["method_info"]["saved"]["bitfit_biases"])
    assert biases and all(k.endswith("bias") for k in biases) and recs["bitfit"]["method_info"]["added_biases"] > 0
    full = AutoModelForCausalLM.from_pretrained(recs["full"]["method_info"]["saved"]["model"])
    assert full.config.model_type == "llama"


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, data_dir, tiny_models):
    text = _ft_config(tiny_models["opt"]).replace("eval_every: 2", "eval_every: end, mixed_precision: bf16")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    assert _records(tmp_path)[0]["status"] == "ok"


def test_grad_accum_records_the_mean_loss_of_the_step(tiny_models, rte_sample):
    """Micro-batches of 4 and 2 examples make one optimizer step: its loss is their example-weighted mean,
    not the last micro-batch's."""
    task, sample = rte_sample
    loaded = load_model(tiny_models["opt"])
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    model = _task_model("pbft", loaded, enc)
    items = [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample[:6]]
    seen = []

    def loss_fn(logits, target):
        loss = torch.nn.functional.cross_entropy(logits, target)
        seen.append((float(loss.detach()), len(target)))
        return loss

    settings = TrainSettings(max_steps=1, batch_size=4, grad_accum=2, lr=1e-3, warmup_ratio=0.0)
    log = train(model, items, settings, loss_fn=loss_fn, pad_id=loaded.tokenizer.pad_token_id, seed=0,
                device=loaded.device, progress=make_progress(False))
    assert log.steps == 1 and [n for _, n in seen] == [4, 2]
    (first, _), (last, _) = seen
    assert abs(first - last) > 1e-4  # else the test could not tell the two apart
    assert log.losses == [pytest.approx((4 * first + 2 * last) / 6, rel=1e-6)]


def test_evaluation_points_are_a_phase_of_their_own(tmp_path, data_dir, tiny_models, monkeypatch):
    """Evaluation during training is timed and measured apart from it: ``train`` + ``eval_points`` seconds
    add up to the training loop's wall time, and ``train`` leaves the evaluation out."""
    import time

    from adaptbench.methods import finetune

    walls, evals = [], []
    real_train, real_call = finetune.train, finetune.Evaluator.__call__

    def timed(real, into):
        def call(*args, **kwargs):
            start = time.perf_counter()
            out = real(*args, **kwargs)
            into.append(time.perf_counter() - start)
            return out
        return call

    monkeypatch.setattr(finetune, "train", timed(real_train, walls))
    monkeypatch.setattr(finetune.Evaluator, "__call__", timed(real_call, evals))
    assert _run(tmp_path, data_dir, _ft_config(tiny_models["opt"]).replace("eval_every: 2", "eval_every: epoch"))\
        .exit_code == 0
    rec = _records(tmp_path)[0]
    train_, points = rec["costs"]["train"], rec["costs"]["eval_points"]
    assert points["extra"]["count"] == len(rec["method_info"]["history"]) == len(evals) == 2
    assert points["tokens"] > 0 and points["peak_memory_bytes"] > 0 and points["seconds"] <= sum(evals)
    assert train_["seconds"] + points["seconds"] == pytest.approx(walls[0], abs=0.05)
    assert train_["seconds"] <= walls[0] - sum(evals) + 0.05  # evaluation is no longer counted as training
    assert train_["extra"]["excluded_seconds"] == {"eval_points": pytest.approx(points["seconds"], abs=1e-3)}
    assert "eval_seconds" not in train_["extra"]
