"""The cost curve of a distilled context: cd.context_tokens cuts the context, cd.query_costs times three
ways to answer a query, and the report draws the curve (issue 11)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from adaptbench.breakeven import PathCost, break_even
from adaptbench.methods.cd.query_costs import DISTILL_PHASES
from adaptbench.report import make_report

from .test_run import _records, _run

CONTEXT = ("def parse(args):\n    \"\"\"Read the options a user gave and return them as a namespace.\"\"\"\n"
           "    parser = make_parser()\n    return parser.parse_args(args)\n\n") * 6
INPUTS = ["parser.add_argument('--verbose', action='store_true')", "args = parse(sys.argv[1:])",
          "parser = make_parser()", "def main():\n    options = parse(None)", "return parser.parse_args(args)",
          "parser.add_argument('files', nargs='*')", "if args.verbose:\n    print(args)",
          "namespace = parse(['-v'])", "make_parser().print_help()", "sys.exit(main())"]
PATHS = {"icl", "icl_cached", "distilled"}


def _config(model: str, cd: str, grid: str = "") -> str:
    return f"""# adaptbench run sweep.yaml
name: t
model: {model}
task: none
method: cd
trainable: lora
shots: 0
data_seeds: [0]
cd: {{target: sequence, context: 'file:context.txt', inputs: inputs.jsonl, held_out: 3, generations: 0, {cd}}}
train: {{max_steps: 2, batch_size: 4, lr: 1.0e-3}}
runtime: {{progress: false}}
{grid}"""


def _files(folder: Path) -> None:
    (folder / "context.txt").write_text(CONTEXT)
    (folder / "inputs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in INPUTS))


@pytest.fixture(scope="module")
def curve(tmp_path_factory, data_dir, tiny_models) -> Path:
    """Two points of a curve (L = 24 and 48 tokens of the file), each timing 2 held-out queries three ways."""
    folder = tmp_path_factory.mktemp("curve")
    _files(folder)
    result = _run(folder, data_dir, _config(tiny_models["llama"], "query_costs: 2",
                                            "grid: {cd.context_tokens: [24, 48]}\n"))
    assert result.exit_code == 0, result.output
    return folder


def test_context_tokens_cuts_the_context(curve):
    recs = _records(curve)
    assert sorted(r["method_info"]["context_tokens"] for r in recs) == [24, 48]
    assert all(r["status"] == "ok" for r in recs), [r.get("reason") for r in recs]
    assert len({r["run_id"] for r in recs}) == 2  # the length is part of the run's identity


def test_query_costs_record_three_paths_and_the_break_even(curve):
    for rec in _records(curve):
        info, costs = rec["method_info"], rec["costs"]
        paths = info["query_costs"]
        assert set(paths) == PATHS and info["query_costs_inputs"] == "held_out"
        for name, p in paths.items():
            assert p["n"] == 2 and len(p["seconds"]) == 2 and p["per_query_seconds"] > 0
            assert p["peak_memory_bytes"] > 0 and p["peak_memory_bytes"] == costs[f"query:{name}"]["peak_memory_bytes"]
        assert paths["icl"]["setup_seconds"] == 0 and paths["icl_cached"]["setup_seconds"] > 0
        assert paths["distilled"]["setup_seconds"] == pytest.approx(
            sum(p["seconds"] for n, p in costs.items() if n in DISTILL_PHASES))
        # the ICL paths were timed inside the teacher phase, and left out of it
        assert set(costs["teacher"]["extra"]["excluded_seconds"]) >= {"query:icl", "query:icl_cached"}
        cost = {n: PathCost(n, p["setup_seconds"], p["per_query_seconds"], p["peak_memory_bytes"])
                for n, p in paths.items()}
        assert info["break_even"] == {f"vs_{b}": break_even(cost[b], cost["distilled"])
                                      for b in ("icl", "icl_cached")}
        # the re-encoding path ran context + query for every query
        tokens = costs["query:icl"]["tokens"] - costs["query:icl_cached"]["tokens"]
        assert tokens == 2 * info["context_tokens"]


def test_the_report_has_the_table_and_both_figures(curve):
    rep = make_report(str(curve / "results" / "t"))
    names = {Path(f).name for f in rep.files}
    for stem in ("cost_curve_", "cost_cumulative_"):
        assert {ext for n in names if n.startswith(stem) for ext in (n.rsplit(".", 1)[1],)} == {"png", "svg"}, stem
    table = pd.read_csv(Path(rep.out_dir) / "cost_curve.csv")
    assert len(table) == 6 and set(table["path"]) == PATHS and sorted(set(table["context_tokens"])) == [24, 48]
    rec = next(r for r in _records(curve) if r["method_info"]["context_tokens"] == 48)
    row = table[(table["context_tokens"] == 48) & (table["path"] == "distilled")].iloc[0]
    expected = rec["method_info"]["break_even"]["vs_icl"]
    assert row["break_even_vs_icl"] == (math.inf if expected is None else pytest.approx(expected))
    md = (Path(rep.out_dir) / "summary.md").read_text()
    page = (Path(rep.out_dir) / "report.html").read_text()
    for text in (md, page):
        assert "Cost curve: when does distilling pay?" in text and "break-even vs icl_cached" in text
    assert page.count("data:image/png;base64,") == len([n for n in names if n.endswith(".png")])


def test_a_context_shorter_than_context_tokens_skips_the_run(tmp_path, data_dir, tiny_models):
    _files(tmp_path)
    assert _run(tmp_path, data_dir, _config(tiny_models["llama"], "context_tokens: 100000")).exit_code == 0
    [rec] = _records(tmp_path)
    assert rec["status"] == "skipped"
    assert "cd.context_tokens: 100000 tokens asked for" in rec["reason"] and "has only" in rec["reason"]
    # demonstrations are not cut mid-example: their length axis is shots
    demos = _config(tiny_models["llama"], "context_tokens: 16").replace("'file:context.txt'", "demonstrations")
    demos = demos.replace("task: none", "task: rte").replace("shots: 0", "shots: 2")
    assert _run(tmp_path, data_dir, demos + "eval: {max_examples: 4}\n").exit_code == 1
    failed = [r for r in _records(tmp_path) if r["status"] == "failed"]
    assert "with cd.context: demonstrations the context's length is set by shots" in failed[0]["reason"]
