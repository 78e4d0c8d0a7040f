"""Every registered method x tiny architecture x allowed trainable policy, end to end through the CLI: the run
finishes, and its record has what the schema requires and nothing the schema does not name -- so a new
method, policy or record key is tested by default (register it, and this test runs it)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from adaptbench.cli.app import app
from adaptbench.config.blocks import METHODS as TRAITS, POLICIES
from adaptbench.methods import METHODS
from adaptbench.store.record import SCHEMA_VERSION, load_record, unknown_keys

from .conftest import ARCHS, write_config

runner = CliRunner()


def _policies(traits) -> list[str | None]:
    """The trainable policies a method allows (None: it trains nothing)."""
    return [p for p in POLICIES if p in traits.trainable] if traits.trains else [None]


def _blocks(arch: str) -> list[str]:
    """One include block per registered method and each policy it allows (its settings at their defaults)."""
    out = []
    for name, traits in TRAITS.items():
        for policy in _policies(traits):
            out.append(f"  - {{method: {name}" + (f", trainable: {policy}" if policy else "") + "}")
    return out


@pytest.fixture(scope="module", params=[ARCHS[0], *(pytest.param(a, marks=pytest.mark.slow) for a in ARCHS[1:])])
def sweep(request, tmp_path_factory, data_dir, tiny_models) -> tuple[str, list[dict]]:
    arch = request.param
    folder = tmp_path_factory.mktemp(f"contract-{arch}")
    text = "\n".join([f"name: contract\nmodel: {tiny_models[arch]}\ntask: rte\nshots: 2\ndata_seeds: [0]",
                      "eval: {max_examples: 4}\ntrain: {max_steps: 1, batch_size: 2}\nbitfit: {add_biases: true}",
                      "runtime: {progress: false}\ninclude:", *_blocks(arch)]) + "\n"
    result = runner.invoke(app, ["run", write_config(folder, text), "--output-dir", str(folder / "results"),
                                 "--data-dir", data_dir])
    assert result.exit_code == 0, result.output
    index = folder / "results" / "contract" / "results.jsonl"
    return arch, [json.loads(line) for line in index.read_text().splitlines()]


def test_every_method_and_policy_runs_and_its_record_follows_the_schema(sweep):
    arch, records = sweep
    expected = {(name, p) for name, t in TRAITS.items() for p in _policies(t)}
    assert {(r["spec"]["method"], r["spec"].get("trainable")) for r in records} == expected
    for data in records:
        where = f"{arch} {data['spec']['method']} {data['spec'].get('trainable')}"
        assert data["status"] == "ok", (where, data.get("reason"))
        rec = load_record(data)
        assert rec.schema_version == SCHEMA_VERSION
        assert type(rec.method_info) is METHODS[rec.spec["method"]].info, where
        assert unknown_keys(rec) == [], (where, "keys the record schema does not name")
        assert set(rec.metrics) == {"rte", "hans"} and all(s["all"].n > 0 for s in rec.metrics.values())
        assert {"load_model", "predict:rte", "predict:hans"} <= set(rec.costs)
        assert rec.model is not None and rec.model.n_params > 0 and rec.predictions["rows"] == 8


def test_records_written_before_the_schema_had_a_version_still_load(sweep):
    """A record without schema_version (written by the version before it) reads as version 0, same fields."""
    _, records = sweep
    old = {k: v for k, v in records[0].items() if k != "schema_version"}
    old["method_info"] = {**old["method_info"], "prefix_cache_disabled": "an older key"}
    rec = load_record(old)
    assert rec.schema_version == 0 and rec.run_id == records[0]["run_id"]
    assert unknown_keys(rec) == ["method_info.prefix_cache_disabled"]
