"""Reports from real tiny runs: right means and stds, plots, an HTML page that renders in Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import adaptbench
from adaptbench.cli.app import app
from adaptbench.errors import AdaptbenchError
from adaptbench.report.pages import make_report

from .test_run import _run

CONFIG = """# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
shots: [2, 4]
data_seeds: 2
eval: {{max_examples: 12}}
train: {{max_steps: 4, batch_size: 4, lr: 1.0e-3, eval_every: 2}}
runtime: {{progress: false}}
include:
  - {{method: icl}}
  - {{method: pbft, trainable: lora}}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, data_dir, tiny_models) -> Path:
    """8 real runs: ICL and PBFT+LoRA x 2 shot counts x 2 data seeds, on a tiny OPT."""
    folder = tmp_path_factory.mktemp("report")
    result = _run(folder, data_dir, CONFIG.format(model=tiny_models["opt"]))
    assert result.exit_code == 0, result.output
    return folder / "results" / "t"


def test_load_results_frame(sweep):
    df = adaptbench.load_results(str(sweep))
    assert df["run_id"].nunique() == 8
    assert set(df["eval_set"]) == {"rte", "hans"} and "label=entailment" in set(df["slice"])
    overall = df[df["slice"] == "all"]
    assert len(overall) == 16 and overall["accuracy"].between(0, 1).all()
    assert {"adapt_seconds", "peak_memory_gib", "spec.train.lr", "in_domain"} <= set(df.columns)


def test_summary_means_and_stds_by_hand(sweep):
    rep = make_report(str(sweep))
    summary = pd.read_csv(Path(rep.out_dir) / "summary.csv")
    assert len(summary) == 4 and set(summary["n"]) == {2}
    records = [json.loads(line) for line in (sweep / "results.jsonl").read_text().splitlines()]
    for _, row in summary.iterrows():
        runs = [r for r in records if r["spec"]["method"] == row["method"] and r["spec"]["shots"] == row["shots"]]
        for name in ("rte", "hans"):
            acc = [r["metrics"][name]["all"]["accuracy"] for r in runs]
            assert row[f"{name} accuracy"] == pytest.approx(np.mean(acc))
            assert row[f"{name} accuracy std"] == pytest.approx(np.std(acc, ddof=1))
        assert row["peak_memory_gib"] == pytest.approx(
            np.mean([max(p["peak_memory_bytes"] for p in r["costs"].values()) for r in runs]) / 2**30)
    md = (Path(rep.out_dir) / "summary.md").read_text()
    assert "±" in md and "| pbft" in md


def test_plots_and_html(sweep):
    rep = make_report(str(sweep))
    names = {Path(f).name for f in rep.files}
    for stem in ("in_vs_ood_", "shots_", "cost_", "curves_"):
        assert any(n.startswith(stem) and n.endswith(".png") for n in names), stem
        assert any(n.startswith(stem) and n.endswith(".svg") for n in names), stem
    page = (Path(rep.out_dir) / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len([n for n in names if n.endswith(".png")])
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")  # self-contained


def test_report_command_prints_the_table(sweep):
    result = CliRunner().invoke(app, ["report", str(sweep)])
    assert result.exit_code == 0 and "pbft" in result.output and "±" in result.output


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _render(page: Path, shot: Path, tmp: Path) -> str:
    """Open a page in headless Chromium, screenshot it; returns the browser's log."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / 'profile'}", "--enable-logging=stderr", "--v=0", "--hide-scrollbars",
           "--window-size=1280,1600", f"--screenshot={shot}", page.as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout + done.stderr


def _console_errors(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (.ci/run installs it)")
def test_html_renders_in_chromium(sweep, tmp_path):
    import matplotlib.image

    # the check can see console errors: a page that makes one is caught
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom')</script></body></html>")
    assert _console_errors(_render(bad, tmp_path / "bad.png", tmp_path))

    rep = make_report(str(sweep))
    shot = tmp_path / "report.png"
    log = _render(Path(rep.out_dir) / "report.html", shot, tmp_path)
    assert shot.is_file(), log
    assert _console_errors(log) == []
    pixels = matplotlib.image.imread(str(shot))[..., :3]
    not_white = (pixels < 0.95).any(axis=2).mean()
    assert not_white > 0.05 and pixels.std() > 0.05  # tables and figures, not a blank page


def test_corrupt_results_are_reported_not_fatal(sweep, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sweep, broken, ignore=shutil.ignore_patterns("report"))
    index = broken / "results.jsonl"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])  # killed mid-line
    (broken / "notes.txt").write_text("mine")
    (broken / "runs" / "stray.json").write_text("{}")
    (broken / "runs" / "0123456789ab").mkdir()  # a run that never finished
    rep = make_report(str(broken))
    text = "\n".join(rep.problems)
    assert "not a complete JSON record (truncated?)" in text and "notes.txt" in text and "stray.json" in text
    assert "0123456789ab: no result.json" in text
    assert rep.n_records == 8  # the truncated line's run is recovered from its run folder
    with pytest.raises(AdaptbenchError, match="nothing-here: no such folder"):
        make_report(str(tmp_path / "nothing-here"))


def test_unscored_examples_are_shown_where_they_are_not_zero(sweep, tmp_path):
    """A mean over fewer examples than the eval set has says so -- in summary.csv/.md, the HTML page and
    the table printed after a run -- and tables without unscored examples stay as they were."""
    from rich.console import Console

    from adaptbench.cli.console import run_table

    def text(table) -> str:
        console = Console(width=250, record=True)
        console.print(table)
        return console.export_text()

    copy = tmp_path / "t"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("report"))
    recs = [json.loads(line) for line in (copy / "results.jsonl").read_text().splitlines()]
    assert "unscored" not in text(run_table(recs))
    rec = next(r for r in recs if r["spec"]["method"] == "icl" and r["spec"]["shots"] == 2)
    rec["metrics"]["rte"]["all"].update(n=9, n_unscored=3)  # 3 of its 12 examples did not fit
    rec["eval_sets"]["rte"]["n_unscored"] = 3
    (copy / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (copy / "runs" / rec["run_id"] / "result.json").write_text(json.dumps(rec) + "\n")

    rep = make_report(str(copy))
    summary = pd.read_csv(Path(rep.out_dir) / "summary.csv")
    marked = (summary["method"] == "icl") & (summary["shots"] == 2)
    assert list(summary.loc[marked, ["rte unscored", "rte examples"]].iloc[0]) == [3, 24]  # over its 2 runs
    assert (summary.loc[~marked, "rte unscored"] == 0).all() and "hans unscored" not in summary
    shown = rep.table.set_index(["method", "shots"])
    assert shown.loc[("icl", 2), "unscored"] == "rte 3/24" and shown.loc[("icl", 2), "rte accuracy"].endswith("*")
    assert shown.loc[("icl", 4), "unscored"] == "" and not shown.loc[("icl", 4), "rte accuracy"].endswith("*")
    assert not shown.loc[("icl", 2), "hans accuracy"].endswith("*")
    md = (Path(rep.out_dir) / "summary.md").read_text()
    assert "rte 3/24" in md and "did not fit the model's window" in md
    page = (Path(rep.out_dir) / "report.html").read_text()
    assert "rte 3/24" in page and "did not fit the model&#x27;s window" in page

    printed = text(run_table(recs))
    accuracy = rec["metrics"]["rte"]["all"]["accuracy"]
    assert f"{accuracy:.3f}*" in printed and "rte 3/12" in printed and "k of n examples unscored" in printed
