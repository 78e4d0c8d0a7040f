"""``ADAPTBENCH_CPU_BF16=1`` on a CPU with bfloat16 matrix instructions: ``auto`` becomes bfloat16 weights for
scoring and bf16 autocast over float32 master weights for training, recorded in the run's identity, its record
and ``show``.  Without it ``auto`` stays float32 on CPU (bfloat16 changes results: docs/models.md, Precision).

The suite runs with ``ADAPTBENCH_CPU_BF16=0`` (conftest) so its values do not depend on the caller; these
tests set it themselves.
"""

from __future__ import annotations

import pytest

from adaptbench._util import cpu
from adaptbench.errors import AdaptbenchError
from adaptbench.models.loading import auto_dtype
from adaptbench.sweep.identity import resolved_dtype
from adaptbench.training.precision import resolved_mixed_precision

from .test_run import _records, _run


@pytest.fixture
def flags(monkeypatch):
    """Pretend the CPU lists these flags."""
    def set_flags(*names: str):
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(("avx2", "fma", *names)))
    return set_flags


@pytest.mark.parametrize("names, fast", [((), False), (("avx512f", "avx512bw"), False), (("avx512_bf16",), True),
                                         (("amx_bf16", "amx_tile", "avx512_bf16"), True)])
def test_asked_for_auto_is_bfloat16_only_where_the_cpu_multiplies_it_natively(flags, monkeypatch, names, fast):
    """AVX-512 without BF16 emulates bfloat16 (slower than float32): auto stays float32 there."""
    flags(*names)
    monkeypatch.setenv(cpu.ENV, "1")
    assert cpu.cpu_bf16() is fast
    assert auto_dtype("cpu") == resolved_dtype("auto", "cpu") == ("bfloat16" if fast else "float32")
    assert resolved_mixed_precision("auto", "cpu") == ("bf16" if fast else "no")
    assert resolved_dtype("float32", "cpu") == "float32" and resolved_mixed_precision("no", "cpu") == "no"
    assert cpu.bf16_instructions() == [f for f in ("amx_bf16", "avx512_bf16") if f in names]
    monkeypatch.delenv(cpu.ENV)  # not asked for: float32, whatever the CPU has
    assert auto_dtype("cpu") == "float32" and resolved_mixed_precision("auto", "cpu") == "no"


def test_the_setting_is_checked_and_force_ignores_the_cpu(flags, monkeypatch):
    flags()
    monkeypatch.setenv(cpu.ENV, "force")
    assert auto_dtype("cpu") == "bfloat16"
    assert auto_dtype("mps") == "float32"  # other devices are not this CPU's
    assert resolved_mixed_precision("auto", "cuda") == "no"  # GPU training keeps float32 compute unless asked
    monkeypatch.setenv(cpu.ENV, "yes please")
    with pytest.raises(AdaptbenchError, match="ADAPTBENCH_CPU_BF16='yes please': use 1"):
        auto_dtype("cpu")


SWEEP = """# adaptbench run sweep.yaml
name: t
model: {model}
task: rte
include:
  - {{method: icl}}
  - {{method: pbft, trainable: lora}}
  - {{method: cd, trainable: lora}}
shots: 4
data_seeds: [0]
train: {{max_steps: 2, batch_size: 4}}
eval: {{max_examples: 4}}
runtime: {{progress: false}}
"""


def test_auto_runs_in_bfloat16_and_says_so(tmp_path, data_dir, tiny_models, monkeypatch):
    text = SWEEP.format(model=tiny_models["opt"])
    monkeypatch.setenv(cpu.ENV, "force")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    runs = {r["spec"]["method"]: r for r in _records(tmp_path)}
    assert all(r["status"] == "ok" for r in runs.values()), [r.get("reason") for r in runs.values()]
    icl, pbft, cd = runs["icl"], runs["pbft"], runs["cd"]
    assert icl["spec"]["resolved"]["dtype"] == "bfloat16" and icl["model"]["dtype"] == "bfloat16"
    assert icl["costs"]["predict:rte"]["compute_dtype"] == "bfloat16"
    assert icl["environment"]["cpu_bf16"] == {"instructions": cpu.bf16_instructions(), "used": True,
                                              "setting": "force"}
    for run in (pbft, cd):  # float32 master weights, bf16 compute: observed in training and predictions
        assert run["spec"]["train"]["mixed_precision"] == "auto"
        assert run["spec"]["resolved"]["mixed_precision"] == "bf16" and run["model"]["dtype"] == "float32"
        costs = run["costs"]
        assert costs["train"]["extra"]["observed_compute_dtype"] == "bfloat16"
        assert costs["predict:rte"]["extra"]["observed_compute_dtype"] == "bfloat16"
        assert costs["train"]["weights_dtype"] == "float32"
    # the teacher pass on the student's own float32 weights computes as the student trains
    assert cd["costs"]["teacher"]["extra"]["observed_compute_dtype"] == "bfloat16"

    # the same config where the CPU has no bfloat16 instructions: other run ids, float32 throughout
    monkeypatch.setenv(cpu.ENV, "0")
    assert _run(tmp_path, data_dir, text).exit_code == 0
    fp32 = {r["spec"]["method"]: r for r in _records(tmp_path) if r["run_id"] not in
            {x["run_id"] for x in runs.values()}}
    assert set(fp32) == {"icl", "pbft", "cd"}
    assert fp32["icl"]["model"]["dtype"] == "float32" and fp32["pbft"]["spec"]["resolved"]["mixed_precision"] == "no"
    assert fp32["cd"]["costs"]["teacher"]["extra"]["observed_compute_dtype"] == "float32"
    assert fp32["pbft"]["costs"]["train"]["extra"]["observed_compute_dtype"] == "float32"

    from adaptbench.cli.app import app
    from typer.testing import CliRunner

    shown = CliRunner().invoke(app, ["show", pbft["run_id"], "--results-dir", str(tmp_path / "results" / "t")])
    assert shown.exit_code == 0, shown.output
    assert "weights float32, training autocast bf16 (auto: ADAPTBENCH_CPU_BF16=force" in " ".join(shown.output.split())
    shown = CliRunner().invoke(app, ["show", icl["run_id"], "--results-dir", str(tmp_path / "results" / "t")])
    assert "model.dtype auto -> bfloat16 (auto: ADAPTBENCH_CPU_BF16=force" in " ".join(shown.output.split())
