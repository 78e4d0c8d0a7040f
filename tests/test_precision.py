"""Mixed precision keeps float32 master weights: low precision is in the compute, never in the update.

The failure this guards against: a model loaded in bfloat16 (what ``dtype: auto`` gives on GPUs)
updated in place by AdamW at lr 1e-5 keeps most of its weights unchanged -- the updates are below
bfloat16's resolution -- and the run still ends ``ok``.
"""

from __future__ import annotations

import os

import pytest
import torch

from adaptbench.config.schema import PromptSpec
from adaptbench.errors import AdaptbenchError
from adaptbench.methods.pbft import VerbalizerModel
from adaptbench.models.loading import load_model
from adaptbench.training.precision import check_master_weights, training_model_spec
from adaptbench._util.progress import make_progress
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.training.policies import LoraSettings
from adaptbench.config.settings import ModelSpec
from adaptbench.training.settings import TrainSettings
from adaptbench.training.policies import apply_policy
from adaptbench.training.loop import TrainItem, train

from .test_run import _records, _run


@pytest.fixture(scope="module")
def items_for(data_dir):
    from adaptbench.data import get_task, train_pool

    task = get_task("rte")
    sample = few_shot_sample(train_pool(task, data_dir), 8, seed=0, n_labels=2)

    def make(loaded):
        enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
        return enc, [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample]
    return make


def _one_step_changed(loaded, items_for, mixed_precision: str) -> float:
    """Share of the trainable weights that one AdamW step at lr 1e-5 changes."""
    enc, items = items_for(loaded)
    model = VerbalizerModel(loaded.model, enc.label_token_ids)
    apply_policy(model, "full", freeze_embeddings=True)  # embedding rows of unseen tokens get no gradient
    check_master_weights(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    settings = TrainSettings(max_steps=1, batch_size=8, lr=1e-5, warmup_ratio=0.0, schedule="constant",
                             mixed_precision=mixed_precision)
    train(model, items, settings, loss_fn=torch.nn.functional.cross_entropy, pad_id=loaded.tokenizer.pad_token_id,
          seed=0, device=loaded.device, progress=make_progress(False))
    changed = total = 0
    for n, p in model.named_parameters():
        if n in before:
            changed += int((p.detach() != before[n]).sum())
            total += p.numel()
    return changed / total


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_one_step_at_lr_1e5_changes_the_weights(tiny_models, items_for, mixed_precision):
    # Llama: SiLU everywhere, so every weight gets a gradient (OPT's ReLU leaves dead units without one)
    device = os.environ.get("ADAPTBENCH_TEST_DEVICE", "cpu")  # scripts/gpu_check.sh runs it on CUDA
    loaded = load_model(tiny_models["llama"], dtype="float32", device=device)
    assert _one_step_changed(loaded, items_for, mixed_precision) >= 0.99


def test_bfloat16_trainable_weights_are_refused(tiny_models, items_for):
    loaded = load_model(tiny_models["opt"], dtype="bfloat16")
    enc, _ = items_for(loaded)
    model = VerbalizerModel(loaded.model, enc.label_token_ids)
    apply_policy(model, "full")
    with pytest.raises(AdaptbenchError, match="not float32.*mixed_precision: bf16"):
        check_master_weights(model)
    # LoRA on a bfloat16 base is fine: the adapters are float32, the frozen base stays bfloat16
    lora_model = VerbalizerModel(load_model(tiny_models["llama"], dtype="bfloat16").model, enc.label_token_ids)
    apply_policy(lora_model, "lora", lora=LoraSettings())
    check_master_weights(lora_model)


def test_auto_dtype_loads_float32_master_weights_for_training():
    assert training_model_spec(ModelSpec(name="m")).dtype == "float32"  # auto would be bf16 on a GPU
    assert training_model_spec(ModelSpec(name="m", dtype="bfloat16")).dtype == "bfloat16"  # explicit: checked


def test_record_states_weights_and_compute_dtype(tmp_path, data_dir, tiny_models):
    text = f"""# adaptbench run sweep.yaml
name: t
model: {tiny_models["opt"]}
task: rte
method: pbft
trainable: full
shots: 4
data_seeds: [0]
train: {{max_steps: 2, batch_size: 4, mixed_precision: bf16}}
eval: {{max_examples: 4}}
runtime: {{progress: false}}
"""
    assert _run(tmp_path, data_dir, text).exit_code == 0
    rec = _records(tmp_path)[0]
    assert rec["status"] == "ok" and rec["model"]["dtype"] == "float32"
    costs = rec["costs"]
    # observed, not derived from the settings: the matmuls of training and of the predictions ran in bf16
    assert costs["train"]["extra"]["observed_compute_dtype"] == "bfloat16"
    assert costs["predict:rte"]["extra"]["observed_compute_dtype"] == "bfloat16"
    assert costs["train"]["weights_dtype"] == "float32" and costs["train"]["compute_dtype"] == "bfloat16"
    assert costs["predict:rte"]["compute_dtype"] == "bfloat16"
    assert costs["load_model"]["compute_dtype"] == "float32"
    # and it changed the numbers: the same run without autocast trains and predicts otherwise
    assert _run(tmp_path, data_dir, text.replace("mixed_precision: bf16", "mixed_precision: 'no'")).exit_code == 0
    fp32 = next(r for r in _records(tmp_path) if r["spec"]["train"]["mixed_precision"] == "no")
    assert fp32["costs"]["train"]["extra"]["observed_compute_dtype"] == "float32"
    assert fp32["method_info"]["train_losses"] != rec["method_info"]["train_losses"]
    # an explicit bfloat16 model cannot be fully fine-tuned: the run fails with the reason
    result = _run(tmp_path, data_dir, text.replace(f"model: {tiny_models['opt']}",
                                                   f"model: {{name: {tiny_models['opt']}, dtype: bfloat16}}"))
    assert result.exit_code == 1
    failed = [r for r in _records(tmp_path) if r["status"] == "failed"]
    assert failed and "not float32" in failed[0]["reason"]
