"""The cost curve of a distilled context: cd.context_tokens cuts the context, cd.query_costs times three
ways to answer a query, and the report draws the curve (issue 11)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from adaptbench.methods.cd.query_costs import DISTILL_PHASES
from adaptbench.report.pages import make_report

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


def _break_even_by_hand(icl: dict, student: dict) -> float | None:
    """n* with setup_s + n * q_s <= setup_i + n * q_i for every n >= n*, written out from its definition."""
    if student["per_query_seconds"] > icl["per_query_seconds"]:
        return None
    if student["setup_seconds"] <= icl["setup_seconds"]:
        return 0.0
    if student["per_query_seconds"] == icl["per_query_seconds"]:
        return None
    return ((student["setup_seconds"] - icl["setup_seconds"])
            / (icl["per_query_seconds"] - student["per_query_seconds"]))


def test_query_costs_record_three_paths_and_the_break_even(curve):
    for rec in _records(curve):
        info, costs = rec["method_info"], rec["costs"]
        paths = info["query_costs"]
        assert set(paths) == PATHS and info["query_costs_inputs"] == "held_out"
        # a LoRA student of the teacher's own model: all three measured together, after training
        assert [sorted(g) for g in info["query_costs_interleaved"]] == [sorted(PATHS)]
        for name, p in paths.items():
            assert p["n"] == 2 and len(p["seconds"]) == 2 and p["per_query_seconds"] == pytest.approx(
                sorted(p["seconds"])[0] / 2 + sorted(p["seconds"])[1] / 2)  # the median of two
            assert p["peak_memory_bytes"] > 0 and p["peak_memory_bytes"] == costs[f"query:{name}"]["peak_memory_bytes"]
        assert paths["icl"]["setup_seconds"] == 0
        assert paths["icl_cached"]["setup_seconds"] == pytest.approx(costs["setup:icl_cached"]["seconds"], rel=0.5)
        assert paths["distilled"]["setup_seconds"] == pytest.approx(
            sum(p["seconds"] for n, p in costs.items() if n in DISTILL_PHASES))
        assert "query_timing" in costs and "query:icl" not in costs["teacher"]["extra"].get("excluded_seconds", {})
        for base in ("icl", "icl_cached"):
            expected = _break_even_by_hand(paths[base], paths["distilled"])
            assert info["break_even"][f"vs_{base}"] == (None if expected is None else pytest.approx(expected))
        # the re-reading path reads the shared prefix with every query, the cached one only the rest
        prefix = info["shared_prefix_tokens"]
        assert paths["icl"]["tokens_per_query"] - paths["icl_cached"]["tokens_per_query"] == prefix
        assert prefix in (info["context_tokens"], info["context_tokens"] - 1)


@pytest.fixture(scope="module")
def wide_head_llama(tokenizer, tmp_path_factory) -> str:
    """A one-layer Llama whose output layer is 32 MiB (8,192 x 1,024 float32): a copy of it kept beside one
    path and not another would show in their peaks."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=8192, hidden_size=1024, num_hidden_layers=1, intermediate_size=1024,
                         num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=2048,
                         bos_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    folder = tmp_path_factory.mktemp("wide") / "llama"
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("trainable", ["lora", "full"])
def test_the_paths_peak_memory_is_measured_alike(tmp_path, data_dir, wide_head_llama, trainable):
    """At a short context, keeping the context's KV cache costs at most the cache's bytes (plus 8 MiB of
    allocator slack) over re-reading it -- nothing else (a 32 MiB copy of the output layer, once) rides on
    one path's peak; the student reads less than either.  Both ways of measuring: together after training
    (LoRA), and the ICL paths before the teacher's targets exist (full fine-tuning)."""
    _files(tmp_path)
    text = _config(wide_head_llama, "query_costs: 2, context_tokens: 48, store: hidden").replace(
        "trainable: lora", f"trainable: {trainable}").replace("max_steps: 2", "max_steps: 1")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    peak = {name: p["peak_memory_bytes"] for name, p in info["query_costs"].items()}
    cache_bytes = 2 * 1 * 4 * 64 * info["shared_prefix_tokens"] * 4  # keys+values x layers x kv heads x dim x 4 B
    slack = 8 * 2**20
    assert peak["icl_cached"] - peak["icl"] <= cache_bytes + slack, (peak, cache_bytes)
    together = trainable == "lora"
    assert (len(info["query_costs_interleaved"]) == 1) == together
    if together:  # the same things resident for all three
        assert peak["distilled"] - peak["icl"] <= slack, peak
    else:  # the student after training: its rise above what was resident then
        rise = {name: p["peak_memory_bytes"] - p["resident_bytes"] for name, p in info["query_costs"].items()}
        assert rise["distilled"] <= rise["icl"] + slack, rise


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
