"""What the console says: one informative line per run, no library bars, ``adaptbench show``."""

from __future__ import annotations

import re

from adaptbench.cli.app import app

from .test_run import _config, _records, _run, runner

def test_one_line_per_run_with_its_outcome(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], seeds=2))
    assert result.exit_code == 0, result.output
    recs = _records(tmp_path)
    lines = [line for line in result.output.splitlines() if re.match(r"\[\d/2\] ", line)]
    assert len(lines) == 2
    by_id = {rec["run_id"][:8]: rec for rec in recs}  # results.jsonl orders by finish second, then run id
    for i, line in enumerate(lines):
        rec = by_id[line.split()[1]]
        acc = rec["metrics"]["rte"]["all"]["accuracy"]
        seconds = sum(p["seconds"] for p in rec["costs"].values())
        assert line.startswith(f"[{i + 1}/2] {rec['run_id'][:8]} icl k=4 seed={rec['spec']['data_seed']}"
                               f" ok  rte {acc:.3f}")
        assert line.endswith(" GiB") and f"{seconds:.1f} s" in line
    assert "Loading weights" not in result.output and "de-quantizing" not in result.output


def test_show_a_run_by_id_folder_and_sweep(tmp_path, data_dir, tiny_models):
    assert _run(tmp_path, data_dir, _config(tiny_models["llama"], seeds=2)).exit_code == 0
    recs = _records(tmp_path)
    results = str(tmp_path / "results")
    rec = recs[1]
    shown = runner.invoke(app, ["show", rec["run_id"][:6], "--results-dir", results])
    assert shown.exit_code == 0, shown.output
    text = shown.output
    assert f"run {rec['run_id']}" in text and "ok" in text
    assert re.search(rf"data_seed\s+{rec['spec']['data_seed']}", text) and re.search(r"method\s+icl", text)
    assert re.search(rf"rte \(in-domain\)\s+12\s+{rec['metrics']['rte']['all']['accuracy']:.4f}", text)
    for phase, cost in rec["costs"].items():
        assert re.search(rf"{re.escape(phase)}\s+{cost['seconds']:.2f}", text)
    assert "result.json" in text and "predictions.jsonl" in text

    by_folder = runner.invoke(app, ["show", str(tmp_path / "results" / "t" / "runs" / rec["run_id"])])
    assert by_folder.exit_code == 0 and f"run {rec['run_id']}" in by_folder.output

    sweep = runner.invoke(app, ["show", str(tmp_path / "results" / "t")])  # two runs: which one?
    assert sweep.exit_code == 0 and "pass one run id" in sweep.output and recs[0]["run_id"][:8] in sweep.output

    missing = runner.invoke(app, ["show", "abcdef12", "--results-dir", results])
    assert missing.exit_code == 2 and "no finished run abcdef12 under" in missing.output
    bad = runner.invoke(app, ["show", "no-such-thing"])
    assert bad.exit_code == 2 and "neither a folder nor a run id" in bad.output


def test_a_failed_run_says_why_on_its_line(tmp_path, data_dir, tiny_models):
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], "data_seeds: [0]\n"
                  "include:\n  - {method: icl}\n  - {method: icl, shots: 400}\n", seeds=1))
    lines = [line for line in result.output.splitlines() if re.match(r"\[\d/2\] ", line)]
    assert len(lines) == 2
    skipped = [line for line in lines if " skipped " in line]
    assert skipped and re.search(r"skipped \(\d+\.\d s\): .+", skipped[0])
