"""End to end through the CLI: records, predictions, resume, skips and failures, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adaptbench.cli.app import app

from .conftest import save_tiny_model, with_settings, write_config

runner = CliRunner()


def _config(model: str, extra: str = "", seeds: int = 2, max_examples: int = 12) -> str:
    return with_settings(f"""# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
method: icl
shots: 4
data_seeds: {seeds}
eval:
  max_examples: {max_examples}
runtime: {{progress: false}}
""", extra)


def _run(tmp_path: Path, data_dir: str, text: str, *args: str):
    path = write_config(tmp_path, text)
    return runner.invoke(app, ["run", path, "--output-dir", str(tmp_path / "results"), "--data-dir", data_dir, *args])


def _records(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "results" / "t" / "results.jsonl").read_text().splitlines()]


def test_icl_sweep_writes_records_and_resumes(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"]))
    assert result.exit_code == 0, result.output
    recs = _records(tmp_path)
    assert len(recs) == 2 and {r["status"] for r in recs} == {"ok"}
    rec = recs[0]
    run_dir = tmp_path / "results" / "t" / "runs" / rec["run_id"]
    assert json.loads((run_dir / "result.json").read_text()) == rec
    assert set(rec["metrics"]) == {"rte", "hans"}
    assert rec["eval_sets"]["rte"]["in_domain"] and not rec["eval_sets"]["hans"]["in_domain"]
    assert rec["eval_sets"]["hans"]["where"] == {"heuristic": ["lexical_overlap"]}
    hans = rec["metrics"]["hans"]
    assert hans["all"]["n"] == 12 and hans["label=entailment"]["n"] == 6 and hans["label=non_entailment"]["n"] == 6
    # accuracy is computed from the written predictions
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 24
    for name in ("rte", "hans"):
        rows = [p for p in preds if p["eval_set"] == name]
        assert rec["metrics"][name]["all"]["accuracy"] == pytest.approx(
            sum(p["pred"] == p["label"] for p in rows) / len(rows))
    assert rec["sample"]["label_counts"] == {"entailment": 2, "not_entailment": 2}
    assert recs[0]["sample"]["idx"] != recs[1]["sample"]["idx"]  # two seeds, two samples
    costs = rec["costs"]
    assert {"load_model", "encode_context", "predict:rte", "predict:hans"} <= set(costs)
    assert costs["encode_context"]["tokens"] == rec["method_info"]["context_tokens"] > 0
    assert all(p["seconds"] > 0 and p["peak_memory_bytes"] > 0 for p in costs.values())
    assert rec["environment"]["versions"]["transformers"] and rec["model"]["dtype"] == "float32"
    assert rec["prompt"]["label_tokens"] == ["ĠYes", "ĠNo"]
    assert "eval set columns" in result.output and f"{rec['metrics']['hans']['all']['accuracy']:.3f}" in result.output

    again = _run(tmp_path, data_dir, _config(tiny_models["llama"]))
    assert again.exit_code == 0 and "2 already done, 0 to run" in again.output
    assert _records(tmp_path) == recs
    forced = _run(tmp_path, data_dir, _config(tiny_models["llama"]), "--force")
    assert forced.exit_code == 0 and len(_records(tmp_path)) == 2


def test_same_seeds_same_metrics(tmp_path, data_dir, tiny_models):
    _run(tmp_path, data_dir, _config(tiny_models["opt"]))
    first = {r["run_id"]: r["metrics"] for r in _records(tmp_path)}
    _run(tmp_path, data_dir, _config(tiny_models["opt"]), "--force")
    assert {r["run_id"]: r["metrics"] for r in _records(tmp_path)} == first


def test_cached_and_full_context_runs_agree(tmp_path, data_dir, tiny_models):
    text = _config(tiny_models["gpt2"], "grid: {icl.prefix_cache: [true, false]}\n")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    recs = _records(tmp_path)
    by_cache = {(r["spec"]["icl"]["prefix_cache"], r["spec"]["data_seed"]): r for r in recs}
    for seed in (0, 1):
        assert by_cache[(True, seed)]["metrics"] == by_cache[(False, seed)]["metrics"]
        assert by_cache[(True, seed)]["costs"]["predict:rte"]["tokens"] < by_cache[(False, seed)]["costs"]["predict:rte"]["tokens"]


def test_context_overflow_skips_the_run(tmp_path, data_dir, short_window_model):
    result = _run(tmp_path, data_dir, _config(short_window_model).replace("shots: 4", "shots: 16"))
    assert result.exit_code == 0, result.output
    recs = _records(tmp_path)
    assert {r["status"] for r in recs} == {"skipped"}
    assert "model's window is 256 tokens" in recs[0]["reason"] and "no truncation" in recs[0]["reason"]
    assert "skipped" in result.output


def test_query_overflow_is_counted_not_cut(tmp_path, data_dir, short_window_model):
    """With a short context some long RTE queries still do not fit: left unscored and counted."""
    result = _run(tmp_path, data_dir, _config(short_window_model).replace("shots: 4", "shots: 2")
                  .replace("max_examples: 12", "max_examples: 100").replace("data_seeds: 2", "data_seeds: [4]"))
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["status"] == "ok", rec.get("reason")
    assert rec["method_info"]["context_tokens"] < 256
    unscored = rec["eval_sets"]["rte"]["n_unscored"]
    assert unscored > 0 and rec["metrics"]["rte"]["all"]["n"] == 100 - unscored
    assert rec["metrics"]["rte"]["all"]["n_unscored"] == unscored
    preds = [json.loads(line) for line in (tmp_path / "results/t/runs" / rec["run_id"] / "predictions.jsonl").open()]
    assert sum(p["pred"] is None for p in preds if p["eval_set"] == "rte") == unscored


def test_no_query_fits_skips_the_run_and_resumes(tmp_path, data_dir, tokenizer, tiny_models):
    """The context fits with no room for any query: the run is skipped with the reason -- not a NaN
    accuracy, which the record writer refuses (the sweep crashed, and again on every resume)."""
    (tmp_path / "measure").mkdir()
    assert _run(tmp_path / "measure", data_dir, _config(tiny_models["opt"], seeds=1)).exit_code == 0
    context = _records(tmp_path / "measure")[0]["method_info"]["context_tokens"]
    tight = save_tiny_model("opt", tokenizer, tmp_path / "opt-tight", window=context + 1)
    result = _run(tmp_path, data_dir, _config(tight, seeds=1))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "skipped" and "skipped" in result.output
    assert rec["reason"].startswith(f"no example of eval set 'rte' fits the model's window of {context + 1} tokens "
                                    f"after the context of {context} tokens")
    again = _run(tmp_path, data_dir, _config(tight, seeds=1))
    assert again.exit_code == 0 and "1 already done, 0 to run" in again.output
    assert _records(tmp_path) == [rec]


def test_multi_token_verbalizer_stops_the_sweep_before_a_model_loads(tmp_path, data_dir, tiny_models):
    text = _config(tiny_models["opt"], "prompt: {verbalizer: [' Yes', ' Nevertheless']}\n")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 2 and "Traceback" not in result.output  # a user error, not a crash
    message = " ".join(result.output.split())
    assert "prompt.verbalizer for model" in message and "' Nevertheless'" in message
    assert "not exactly one token" in message
    assert not list((tmp_path / "results").rglob("result.json"))  # checked with the tokenizer alone, no run


@pytest.mark.parametrize("extra,message", [
    ("task: sst2\n", "unknown task 'sst2'"),
    ("eval: {sets: [validation, paws-qqp]}\n", "do not line up"),
    ("icl: {cache: true}\n", "icl.cache: unknown field"),
    ("prompt: {pattern: '{text1} ?'}\n", "must use exactly"),
])
def test_bad_input_exits_2_before_any_model_loads(tmp_path, data_dir, extra, message):
    result = _run(tmp_path, data_dir, _config("no/such-model", extra))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results" / "t" / "runs").exists()


def test_dry_run_lists_runs(tmp_path, data_dir):
    result = _run(tmp_path, data_dir, _config("no/such-model"), "--dry-run")
    assert result.exit_code == 0 and result.output.count("pending") == 2
    assert not (tmp_path / "results").exists()


def test_user_task_end_to_end(tmp_path, data_dir, tiny_models):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(
        f"sentence number {i} is {'good' if i % 2 else 'bad'},{'yes' if i % 2 else 'no'}\n" for i in range(20)))
    (tmp_path / "dev.csv").write_text("text,label\nthis is good,yes\nthis is bad,no\n")
    task = ("task: {name: mine, train: train.csv, validation: dev.csv, text_fields: [text], labels: [no, yes]}\n"
            "prompt: {verbalizer: {no: ' No', yes: ' Yes'}}\n")
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], task))
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["task"]["name"] == "mine" and rec["metrics"]["mine"]["all"]["n"] == 2
    assert rec["prompt"]["pattern"] == "{text1} ?"


def test_tasks_and_methods_commands():
    result = runner.invoke(app, ["tasks"])
    text = result.output.replace("\n", "").replace("│", "").replace(" ", "")
    assert result.exit_code == 0 and "mnli-original" in text and "lexical_overlap" in text
    result = runner.invoke(app, ["methods"])
    assert result.exit_code == 0 and "icl" in result.output


def test_unavailable_device_fails_the_run_not_the_sweep(tmp_path, data_dir, tiny_models):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    text = _config(tiny_models["opt"]).replace(f"model: {tiny_models['opt']}",
                                               f"model: {{name: {tiny_models['opt']}, device: cuda}}")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 1
    assert {r["reason"] for r in _records(tmp_path)} == {"model.device is 'cuda' but CUDA is not available on this machine"}


def test_fine_tuning_leaves_too_long_inputs_unscored_and_untrained(tmp_path, data_dir, tokenizer):
    """PBFT on a model whose window only some RTE examples fit: the others are counted (n_unscored,
    train_dropped_too_long), never truncated and never a crash."""
    from adaptbench.prompts.prompt import PromptEncoder
    from adaptbench.data import eval_examples, get_task, train_pool
    from adaptbench.sweep.inputs import resolve_prompt
    from adaptbench.config.schema import PromptSpec
    from adaptbench.data.sampling import few_shot_sample

    task = get_task("rte")
    enc = PromptEncoder(tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    sample = few_shot_sample(train_pool(task, data_dir), 8, seed=0, n_labels=2)
    evals, _ = eval_examples(task.validation, data_dir, max_examples=12, seed=0)
    lengths = sorted(len(enc.query_ids(ex)) for ex in sample + evals)
    window = lengths[len(lengths) // 2]
    model = save_tiny_model("opt", tokenizer, tmp_path / "opt-short", window=window)
    text = _config(model, "method: pbft\ntrainable: full\ntrain: {max_steps: 2, batch_size: 4}\n", seeds=1)
    result = _run(tmp_path, data_dir, text.replace("shots: 4", "shots: 8"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    too_long = sum(len(enc.query_ids(ex)) > window for ex in evals)
    assert 0 < too_long < len(evals)
    assert rec["metrics"]["rte"]["all"]["n_unscored"] == too_long == rec["eval_sets"]["rte"]["n_unscored"]
    assert rec["method_info"]["train_dropped_too_long"] == sum(len(enc.query_ids(ex)) > window for ex in sample)
