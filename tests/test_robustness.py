"""What a demanding new user broke (issue 23), each item as a test: wrong numbers give the right number, bad
input gets its message and exit status 2 with no traceback, no secret reaches a file or the console."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from adaptbench.scoring import api as api_runs
from adaptbench import load_results
from adaptbench.scoring.api_client import CompletionsClient
from adaptbench.cli.app import app
from adaptbench.config.reading import load_raw
from adaptbench.config.expand import load_sweep
from adaptbench.errors import ConfigError
from adaptbench.report.pages import make_report

from .conftest import write_config
from .test_api_models import FakeEndpoint
from .test_run import _config, _records, _run

runner = CliRunner()


def _bad(result, *fragments: str) -> str:
    """A refused input: exit status 2, no traceback, every fragment in the (whitespace-joined) message."""
    out = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    for fragment in fragments:
        assert fragment in out, (fragment, out)
    return out


# -- 1, 2: wrong numbers from shared folders, stale indexes, edited files -----------------------------------


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory, data_dir, tiny_models) -> Path:
    """Sweeps a (shots 4) and b (shots 4 and 8) under one folder: the two runs at shots 4 are the same runs."""
    root = tmp_path_factory.mktemp("shared")
    for name, shots in (("a", "4"), ("b", "[4, 8]")):
        text = _config(tiny_models["llama"], f"name: {name}\nshots: {shots}\n", max_examples=8)
        path = write_config(root, text, f"{name}.yaml")
        result = runner.invoke(app, ["run", path, "--output-dir", str(root / "results"), "--data-dir", data_dir])
        assert result.exit_code == 0, result.output
    return root / "results"


def _accuracy(rec: dict) -> float:
    return rec["metrics"]["rte"]["all"]["accuracy"]


def test_a_run_shared_by_two_sweeps_counts_once(two_sweeps):
    recs = {json.loads(line)["run_id"]: json.loads(line) for sweep in ("a", "b")
            for line in (two_sweeps / sweep / "results.jsonl").read_text().splitlines()}
    assert len(recs) == 4  # 2 shared (shots 4) + 2 of b's own (shots 8)
    df = load_results(str(two_sweeps))
    assert not df.duplicated(["run_id", "eval_set", "slice"]).any()
    assert df["run_id"].nunique() == 4
    rep = make_report(str(two_sweeps), str(two_sweeps.parent / "report"))  # with an OOD set (hans): no crash
    row = rep.summary[rep.summary["shots"] == 4].iloc[0]
    four = [r for r in recs.values() if r["spec"]["shots"] == 4]
    assert row["n"] == 2 and row["rte accuracy"] == pytest.approx(sum(map(_accuracy, four)) / 2)
    assert row["rte accuracy std"] == pytest.approx(pd.Series([_accuracy(r) for r in four]).std())
    assert not [p for p in rep.problems if "different results" in p]


def test_copies_that_disagree_are_named(two_sweeps, tmp_path):
    root = tmp_path / "results"
    shutil.copytree(two_sweeps, root)
    rec_path = next((root / "b" / "runs").glob("*/result.json"))
    rec = json.loads(rec_path.read_text())
    if rec["spec"]["shots"] != 4:
        rec_path = next(p for p in (root / "b" / "runs").glob("*/result.json")
                        if json.loads(p.read_text())["spec"]["shots"] == 4)
        rec = json.loads(rec_path.read_text())
    rec["metrics"]["rte"]["all"]["accuracy"] = 0.123
    rec_path.write_text(json.dumps(rec))
    df = load_results(str(root))
    assert df["run_id"].nunique() == 4
    rep = make_report(str(root))
    assert any(rec["run_id"] in p and "different results" in p for p in rep.problems), rep.problems


def test_the_run_folders_count_not_a_stale_index(two_sweeps, tmp_path):
    """A truncated result.json, a deleted run folder, edited predictions: noted, and only what is on disk counts."""
    root = tmp_path / "a"
    shutil.copytree(two_sweeps / "a", root)
    runs = sorted((root / "runs").iterdir())
    (runs[0] / "result.json").write_text((runs[0] / "result.json").read_text()[:100])  # truncated
    shutil.rmtree(runs[1])  # deleted, still in results.jsonl
    rep = make_report(str(root))
    assert rep.n_records == 0 and rep.table.empty
    text = "\n".join(rep.problems)
    assert "unreadable" in text and runs[0].name in text
    assert f"lists run {runs[1].name}, whose folder has no record" in text
    shutil.rmtree(root)
    shutil.copytree(two_sweeps / "a", root)
    pred = sorted((root / "runs").iterdir())[0] / "predictions.jsonl"
    pred.write_text(pred.read_text().replace('"pred": 0', '"pred": 1', 1).replace('"pred": 1', '"pred": 0', 1) + "\n")
    rep = make_report(str(root))
    assert rep.n_records == 2 and any("does not match run" in p and "SHA-256" in p for p in rep.problems)
    result = runner.invoke(app, ["show", str(root)])
    assert result.exit_code == 0


# -- 3, 4: config input that was silently taken otherwise ----------------------------------------------------


BASE = """name: t
model: some/model
task: rte
method: icl
shots: 4
"""


@pytest.mark.parametrize("text,fragments", [
    (BASE.replace("method: icl", "method: pbft") + "train: {lr: 3.0e-5, batch_size: 8}\nseeds: 2\ntrain: {epochs: 2}\n",
     ["key 'train' is given twice", "line 6 and line 8"]),
    (BASE.replace("task: rte\n", "task: rte\ntask: mnli\n"), ["key 'task' is given twice", "line 3 and line 4"]),
    (BASE + "train:\n  lr: 1.0e-5\n  lr: 2.0e-5\n", ["key 'lr' is given twice", "line 7 and line 8"]),
])
def test_duplicate_keys_are_refused_naming_both_lines(tmp_path, data_dir, text, fragments):
    result = _run(tmp_path, data_dir, text)
    _bad(result, "malformed YAML", *fragments)


@pytest.mark.parametrize("setting,fragment", [
    ("shots: true", "shots[0]: Input should be a valid integer (got True)"),
    ("eval: {max_examples: true}", "eval.max_examples: Input should be a valid integer (got True)"),
    ("balanced: 'no'", "balanced: Input should be a valid boolean (got 'no')"),
    ("data_seeds: [1.5]", "data_seeds[0]: Input should be a valid integer (got 1.5)"),
    ("grid: {name: [a, b]}", "grid: 'name' cannot be swept"),
    ("grid: {output_dir: [x, y]}", "grid: 'output_dir' cannot be swept"),
])
def test_no_value_is_coerced_into_another_type(tmp_path, data_dir, setting, fragment):
    text = BASE.replace("shots: 4\n", "") if setting.startswith("shots") else BASE
    _bad(_run(tmp_path, data_dir, text + setting + "\n"), fragment)


def test_boolean_labels_match_boolean_data(tmp_path, data_dir, tiny_models):
    rows = [{"text": f"sentence {i} is {'fine' if i % 2 else 'awful'}", "label": bool(i % 2)} for i in range(16)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    task = ("task: {name: b, train: train.jsonl, validation: dev.jsonl, text_fields: [text], labels: [false, true]}\n"
            "prompt: {verbalizer: {false: ' No', true: ' Yes'}}\n")
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], task, seeds=1))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok" and rec["task"]["labels"] == ["false", "true"]
    assert rec["metrics"]["b"]["all"]["n"] == 4


def test_scientific_floats_need_no_dot(tmp_path):
    _, [run] = load_sweep(write_config(tmp_path, BASE.replace("method: icl", "method: pbft") + "train: {lr: 1e-5}\n"))
    assert run.train.lr == 1e-5


# -- 5: training examples that do not fit ----------------------------------------------------------------------


def _long_task(tmp_path: Path, long_labels: set[str]) -> str:
    words = " ".join(["word"] * 400)
    rows = [{"text": (words if label in long_labels and (i // 2) % 2 else "") + f" example {i}", "label": label}
            for i, label in enumerate(["neg", "pos"] * 8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps({"text": f"short {i}", "label": lab}) + "\n"
                                                for i, lab in enumerate(["neg", "pos"] * 2)))
    return ("task: {name: l, train: train.jsonl, validation: dev.jsonl, text_fields: [text], labels: [neg, pos]}\n"
            "prompt: {verbalizer: [' No', ' Yes']}\nmethod: pbft\ntrainable: full\nshots: 8\n"
            "train: {max_steps: 1, batch_size: 4}\n")


def test_dropped_training_examples_are_shown(tmp_path, data_dir, short_window_model):
    result = _run(tmp_path, data_dir, _config(short_window_model, _long_task(tmp_path, {"pos"}), seeds=1))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    dropped = rec["method_info"]["train_dropped_too_long"]
    assert rec["status"] == "ok" and dropped > 0
    out = " ".join(result.output.split())
    assert f"{dropped} of 8 training examples dropped (too long)" in out and "dropped" in out.split("status")[-1]
    rep = make_report(str(tmp_path / "results" / "t"))
    assert rep.table["train dropped"].tolist() == [str(dropped)]


def test_a_label_that_loses_every_example_skips_the_run(tmp_path, data_dir, short_window_model):
    text = _long_task(tmp_path, {"pos"})
    words = " ".join(["word"] * 400)
    rows = [{"text": (words if label == "pos" else "") + f" example {i}", "label": label}
            for i, label in enumerate(["neg", "pos"] * 8)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _run(tmp_path, data_dir, _config(short_window_model, text, seeds=1)).exit_code == 0
    [rec] = _records(tmp_path)
    assert rec["status"] == "skipped" and "every training example of label 'pos' is longer than" in rec["reason"]


# -- 6, 7: code and secrets ------------------------------------------------------------------------------------


def test_trust_remote_code_warns_and_does_not_follow_another_model(tmp_path, data_dir, tiny_models):
    text = _config(tiny_models["opt"], f"model: {{name: {tiny_models['opt']}, trust_remote_code: true}}\n", seeds=1)
    result = _run(tmp_path, data_dir, text, "--dry-run")
    assert result.exit_code == 0
    result = _run(tmp_path, data_dir, text)
    assert "warning: model" in " ".join(result.output.split()) and "trust_remote_code: true" in result.output
    path = write_config(tmp_path, BASE.replace("model: some/model", "model: {name: a, trust_remote_code: true, "
                                                                    "dtype: bfloat16, revision: v2}"), "m.yaml")
    raw = load_raw(path, ["model=b"])
    assert raw["model"] == {"name": "b", "dtype": "bfloat16"}  # how it runs, nothing of model a's own


class EchoingEndpoint(FakeEndpoint):
    """A gateway that answers scoring requests with an error that echoes the request's Authorization header."""

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if len(body["prompt"]) > 40 and not body.get("echo"):
            return httpx.Response(500, json={"error": {"message": f"upstream refused; headers: Authorization: "
                                                                   f"{request.headers['authorization']}"}})
        return super().__call__(request)


SECRET = "sk-test-do-not-leak-4242"
PASSWORD = "hunter2-do-not-leak"


@pytest.mark.parametrize("credentials", ["", f"user:{PASSWORD}@"], ids=["key", "url-password"])
def test_no_secret_reaches_a_file_or_the_console(tmp_path, data_dir, monkeypatch, credentials):
    """The key (sent as a bearer token) or a base_url's password (sent as basic auth) echoed back by a server:
    neither it nor its base64 form is in any file adaptbench writes, nor on the console."""
    import base64

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    fake = EchoingEndpoint()
    monkeypatch.setattr(api_runs, "_client", lambda point, cache_dir: CompletionsClient(
        point, cache_dir=cache_dir, http_client=httpx.Client(transport=httpx.MockTransport(fake))))
    text = f"""name: t
model: {{api: openai-completions, name: davinci-002, base_url: "http://{credentials}127.0.0.1:9/v1"}}
task: rte
method: icl
shots: 2
eval: {{max_examples: 3}}
runtime: {{progress: false, api: {{cache_dir: "{tmp_path / 'api'}", max_retries: 0}}}}
"""
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 1, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "failed" and "Authorization: " in rec["reason"] and "***" in rec["reason"]
    written = "".join(p.read_text(errors="replace") for folder in ("results", "api")  # what adaptbench wrote
                      for p in (tmp_path / folder).rglob("*") if p.is_file())
    assert "sweep.json" in str(list((tmp_path / "results").rglob("*")))
    for secret in (SECRET, PASSWORD, base64.b64encode(f"user:{PASSWORD}".encode()).decode()):
        assert secret not in written and secret not in result.output
    if credentials:
        assert "***@127.0.0.1" in json.dumps(rec["spec"]) and "user:" not in json.dumps(rec["spec"])


def test_a_query_string_in_base_url_is_refused(tmp_path, data_dir):
    text = BASE.replace("model: some/model", "model: {api: openai-completions, name: m, "
                                             "base_url: 'http://h/v1?api-key=abc123456'}")
    _bad(_run(tmp_path, data_dir, text), "base_url must not carry a query string")


# -- 9, 10, 11: crashes and slow failures ---------------------------------------------------------------------


def test_markup_in_names_is_printed_as_written(tmp_path, data_dir, tiny_models):
    rows = [{"text": f"review {i} is {'good' if i % 2 else 'bad'}", "label": i % 2} for i in range(12)]
    for name in ("train", "dev", "ood"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = ("task: {name: 'reviews[v2]', train: train.jsonl, validation: dev.jsonl, text_fields: [text], "
            "labels: [0, 1], ood: {'[/]': ood.jsonl}}\nprompt: {verbalizer: [' No', ' Yes']}\n")
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], task))
    assert result.exit_code == 0, result.output
    assert "reviews[v2]" in result.output and "[/] " in result.output
    rep = runner.invoke(app, ["report", str(tmp_path / "results" / "t")])
    assert rep.exit_code == 0, rep.output
    show = runner.invoke(app, ["show", _records(tmp_path)[0]["run_id"][:8], "--results-dir",
                               str(tmp_path / "results")])
    assert show.exit_code == 0 and "reviews[v2]" in show.output and "predict:[/]" in show.output


def test_folders_that_cannot_be_written_or_read(tmp_path, data_dir, tiny_models):
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "results"
    result = runner.invoke(app, ["run", write_config(tmp_path, _config(tiny_models["opt"])), "--output-dir", str(out),
                                 "--data-dir", data_dir])
    _bad(result, "cannot write the results folder", str(out))
    _bad(runner.invoke(app, ["report", str(tmp_path / "a-file")]), "is a file")
    typo = tmp_path / "typo" / "path"
    _bad(runner.invoke(app, ["report", str(typo)]), "no such folder")
    assert not typo.exists() and not typo.parent.exists()
    (tmp_path / "empty").mkdir()
    _bad(runner.invoke(app, ["report", str(tmp_path / "empty")]), "no sweep results here")


@pytest.mark.parametrize("model,fragments", [
    ("smolm2-135m", ["did you mean smollm2-135m", "HF_HUB_OFFLINE"]),
    ("no-org/no-such-model", ["HF_HUB_OFFLINE"]),
    ("./no/such/folder", ["no such folder or file"]),
])
def test_an_unknown_model_stops_the_sweep_at_once(tmp_path, data_dir, model, fragments):
    start = time.monotonic()
    _bad(_run(tmp_path, data_dir, _config(model)), *fragments)
    assert time.monotonic() - start < 30
    assert not (tmp_path / "results" / "t" / "runs").exists()


# -- 13: messages ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override,fragments,absent", [
    ("train.lrr=3", ["train.lrr: unknown field", "from the override train.lrr=3"], []),
    ("shots=4,8", ["for a list, write [4,8]", "from the override shots=4,8"], []),
    ("runtime.batch_size=0", ["runtime.batch_size: Input should be greater than 0; or Input should be 'auto' (got 0)"],
     ["constrained-int", "literal["]),
    ("model.dtype=bf16", ["model[0].dtype", "from the override model.dtype=bf16"], []),
])
def test_config_messages_name_the_setting_as_typed(tmp_path, override, fragments, absent):
    path = write_config(tmp_path, BASE.replace("method: icl", "method: pbft"))
    with pytest.raises(ConfigError) as info:
        load_sweep(path, [override])
    for fragment in fragments:
        assert fragment in str(info.value)
    for fragment in absent:
        assert fragment not in str(info.value)


def test_a_null_field_is_called_null(tmp_path, data_dir):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": null, "label": "y"}\n')
    (tmp_path / "dev.jsonl").write_text('{"text": "a", "label": "x"}\n')
    task = ("task: {name: n, train: train.jsonl, validation: dev.jsonl, text_fields: [text], labels: [x, y]}\n"
            "prompt: {verbalizer: [' No', ' Yes']}\n")
    _bad(_run(tmp_path, data_dir, _config("some/model", task)), "train.jsonl: line 2: field 'text' is null")


def test_show_says_which_sweep_and_keeps_its_columns(two_sweeps):
    rec = next(json.loads(p.read_text()) for p in (two_sweeps / "a" / "runs").glob("*/result.json"))
    result = runner.invoke(app, ["show", rec["run_id"][:8], "--results-dir", str(two_sweeps)])
    out = " ".join(result.output.split())
    assert result.exit_code == 0 and "is in 2 sweeps" in out and "showing the copy in" in out
    from adaptbench.cli.show import find_run, render

    console = Console(width=60, record=True)
    console.print(render(*find_run(rec["run_id"], str(two_sweeps))))
    text = console.export_text()
    details = text.split("method details")[1]
    assert "context_tokens" in details and "prefix_cache" in details  # the key column survives a long value


def test_a_narrow_table_keeps_k_and_seed():
    """60 columns, long model paths, three eval sets: the names shrink; run ids, k, seed, status and the
    first metrics stay whole."""
    from adaptbench.cli.console import run_table

    def rec(i, model):
        return {"run_id": f"{i:012x}", "status": "ok", "spec": {"model": {"name": model}, "task": "rte",
                "method": "pbft", "trainable": ["full", "lora"][i % 2], "shots": 16, "data_seed": i},
                "metrics": {n: {"all": {"accuracy": 0.5, "n": 10}} for n in ("rte", "hans", "mnli-mismatched")},
                "costs": {"x": {"seconds": 1.0, "peak_memory_bytes": 2**30}}}

    records = [rec(0, "/very/long/path/to/models/opt-1.3b"), rec(1, "/another/long/path/pythia-410m")]
    console = Console(width=60, record=True)
    console.print(run_table(records, width=60))
    lines = console.export_text().splitlines()
    header = next(line for line in lines if line.startswith("run"))
    assert {"k", "seed", "status", "rte"} <= set(header.split()), header
    assert any(line.startswith("000000000000"[:8]) and " 16 " in line and "0.500" in line for line in lines)


def test_figures_label_shots_as_numbers_and_the_csv_keeps_integers(two_sweeps, tmp_path):
    import matplotlib.pyplot as plt

    from adaptbench.report.plots import shots_axis

    fig, ax = plt.subplots()
    ax.plot([4, 8, 16], [0.5, 0.6, 0.7])
    shots_axis(ax, [4, 8, 16])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "8", "16"]
    plt.close(fig)
    rep = make_report(str(two_sweeps / "b"), str(tmp_path / "report"))
    csv = pd.read_csv(Path(rep.out_dir) / "summary.csv", dtype=str)
    assert set(csv["shots"]) == {"4", "8"} and set(csv["n"]) == {"2"}
