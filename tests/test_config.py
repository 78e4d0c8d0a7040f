"""Configs: YAML + overrides, validation messages, grid expansion and stable run ids."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adaptbench.config.expand import expand, load_sweep
from adaptbench.config.reading import load_raw
from adaptbench.errors import ConfigError

from .conftest import REPO, with_settings, write_config

BASE = """
name: t
model: some/model
task: rte
method: icl
shots: [4, 8]
data_seeds: 3
"""


def test_expansion_counts_and_seed_shorthand(tmp_path):
    sweep, runs = load_sweep(write_config(tmp_path, BASE))
    assert len(runs) == 6 and [r.data_seed for r in runs[:3]] == [0, 1, 2]
    assert len({r.run_id for r in runs}) == 6
    _, runs = load_sweep(write_config(tmp_path, BASE), ["data_seeds=[7]", "shots=16"])
    assert [(r.shots, r.data_seed) for r in runs] == [(16, 7)]


def test_overrides_models_and_aliases(tmp_path):
    path = write_config(tmp_path, with_settings(BASE, "model: {name: some/model, dtype: bfloat16}\n"))
    _, runs = load_sweep(path, ["model=facebook/opt-1.3b", "seeds=2", "icl.prefix_cache=false"])
    assert runs[0].model.name == "facebook/opt-1.3b" and runs[0].model.dtype == "bfloat16"  # dtype kept
    assert len(runs) == 4 and runs[0].icl.prefix_cache is False
    _, runs = load_sweep(path, ["model=[a/b, c/d]"])
    assert {r.model.name for r in runs} == {"a/b", "c/d"}


def test_run_ids_ignore_key_order_and_runtime(tmp_path):
    a = write_config(tmp_path, BASE, "a.yaml")
    b = write_config(tmp_path, "data_seeds: 3\nshots: [4, 8]\nmethod: icl\ntask: rte\nmodel: some/model\nname: t\n"
                               "runtime: {batch_size: 3}\n", "b.yaml")
    assert [r.run_id for r in load_sweep(a)[1]] == [r.run_id for r in load_sweep(b)[1]]


def test_run_ids_stable_across_processes(tmp_path):
    path = write_config(tmp_path, BASE)
    code = f"import adaptbench.methods; from adaptbench.config.expand import load_sweep; print(' '.join(r.run_id for r in load_sweep({path!r})[1]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.split() == [r.run_id for r in load_sweep(path)[1]]


def test_grid_over_any_setting(tmp_path):
    path = write_config(tmp_path, with_settings(BASE, "grid: {icl.prefix_cache: [true, false], eval.max_examples: [10, 20]}\n"))
    _, runs = load_sweep(path)
    assert len(runs) == 6 * 4
    assert {(r.icl.prefix_cache, r.eval.max_examples) for r in runs} == {(True, 10), (True, 20), (False, 10),
                                                                         (False, 20)}


@pytest.mark.parametrize("text,match", [
    (with_settings(BASE, "icl: {prefix_cash: true}\n"), r"icl.prefix_cash: unknown field \(allowed: prefix_cache\)"),
    (with_settings(BASE, "shotz: 3\n"), r"shotz: unknown field \(allowed: .*shots"),
    (BASE.replace("method: icl", "method: magic"), "unknown method 'magic'; methods: icl"),
    (BASE.replace("shots: [4, 8]", "shots: [-1]"), r"shots\[0\]: Input should be greater than or equal to 0"),
    (with_settings(BASE, "model: {dtype: float16}\n"), r"model\[0\].name: required field is missing"),
    (with_settings(BASE, "model: {name: x, dtype: fp8}\n"), r"model\[0\].dtype: Input should be 'auto'"),
    (with_settings(BASE, "task: {name: mine, train: a.csv}\n"), r"task\[0\].validation: required field is missing"),
    (with_settings(BASE, "data_seeds: 0\n"), "a seed count must be >= 1"),
    (BASE.replace("method: icl", "method: cd") + "cd: {context_tokens: 512}\n",
     r"cd: .*cd.context_tokens applies to cd.target: sequence only \(this target is 'labels'\)"),
    (BASE.replace("method: icl", "method: cd") + "cd: {target: sequence, top_k: 64}\n",
     r"cd.top_k applies to cd.store: topk"),
])
def test_bad_fields_are_named(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match) as e:
        load_sweep(write_config(tmp_path, text))
    assert str(e.value).startswith(str(tmp_path / "sweep.yaml"))


def test_malformed_yaml_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.yaml: malformed YAML \(line 4, column 6\)"):
        load_raw(write_config(tmp_path, "name: t\nmodel: a\nshots: [3\n  - x: y\n"))
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_raw(write_config(tmp_path, BASE), ["shots"])
    with pytest.raises(ConfigError, match="empty config"):
        load_raw(write_config(tmp_path, ""))
    with pytest.raises(ConfigError, match="cannot read config"):
        load_raw(str(tmp_path / "nope.yaml"))


def test_yes_and_no_stay_strings(tmp_path):
    """YAML 1.1 would read `no`/`yes` as booleans: a label or verbalizer key named no/yes must survive."""
    raw = load_raw(write_config(tmp_path, with_settings(BASE, "task: {name: m, train: a.csv, validation: b.csv, "
                                                "text_fields: [t], labels: [no, yes]}\n")), ["runtime.progress=off"])
    assert raw["task"]["labels"] == ["no", "yes"] and raw["runtime"]["progress"] == "off"
    assert load_raw(write_config(tmp_path, with_settings(BASE, "icl: {prefix_cache: false}\n")))["icl"]["prefix_cache"] is False


def test_include_blocks_and_method_settings(tmp_path):
    text = BASE + """include:
  - {method: icl}
  - {method: pbft, trainable: [full, lora], lora: {r: 4}}
  - {method: vanilla, trainable: head, train: {epochs: 2}}
"""
    _, runs = load_sweep(write_config(tmp_path, text))
    by = {}
    for r in runs:
        by.setdefault((r.method, r.trainable), []).append(r)
    assert {k: len(v) for k, v in by.items()} == {("icl", None): 6, ("pbft", "full"): 6, ("pbft", "lora"): 6,
                                                   ("vanilla", "head"): 6}
    icl, lora, head = by[("icl", None)][0], by[("pbft", "lora")][0], by[("vanilla", "head")][0]
    assert icl.train is None and icl.lora is None and icl.icl is not None  # ICL ids ignore training settings
    assert lora.lora.r == 4 and by[("pbft", "full")][0].lora is None and head.train.epochs == 2
    plain = load_sweep(write_config(tmp_path, BASE, "plain.yaml"))[1]
    assert {r.run_id for r in plain} == {r.run_id for r in by[("icl", None)]}


def test_train_presets_and_policy_checks(tmp_path):
    text = BASE.replace("method: icl", "method: pbft") + "train: {preset: reference, epochs: 5}\n"
    run = load_sweep(write_config(tmp_path, text))[1][0]
    assert (run.train.lr, run.train.batch_size, run.train.warmup_ratio, run.train.schedule) == (1e-5, 32, 0.1, "linear")
    assert run.train.epochs == 5 and run.train.eval_every == "epoch" and run.trainable == "full"
    with pytest.raises(ConfigError, match="pbft adds no head"):
        load_sweep(write_config(tmp_path, BASE.replace("method: icl", "method: pbft") + "trainable: head\n"))
    with pytest.raises(ConfigError, match=r"include\[0\]"):
        load_sweep(write_config(tmp_path, with_settings(BASE, "include: [{method: pbft, train: {lr: -1}}]\n")))


def test_duplicate_cells_collapse():
    _, runs = expand({"name": "t", "model": "m", "task": "rte", "method": "icl", "shots": [4, 4]})
    assert len(runs) == 1


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "configs").rglob("*.yaml") if "accelerate" not in p.parts),
                         ids=lambda p: p.name)
def test_shipped_configs_load_and_open_with_their_command(path: Path):
    """Every sweep config opens with the command that runs it and expands (accelerate's own config
    files are checked in test_distributed.py)."""
    assert path.read_text().splitlines()[0].startswith(f"# adaptbench run configs/{path.relative_to(REPO / 'configs')}")
    sweep, runs = load_sweep(str(path))
    assert runs
