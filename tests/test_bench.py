"""Each bench script runs end to end at tiny size (a tiny random Llama, a few examples): a move or a renamed
function cannot break a bench silently.  The timings they print are not checked here -- only that each
finishes and prints its result (and, for the ICL paths, that they agree).  In-process (runpy), so the imports are paid once."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CASES = {
    "icl_prefix_cache.py": ["--lengths", "300", "--examples", "4", "--full-examples", "2", "--batch-sizes", "2",
                            "--repeats", "1"],
    "pbft_vs_baseline.py": ["--shots", "4", "--epochs", "1", "--batch-size", "2", "--eval-examples", "4"],
    "cd_teacher_cache.py": ["--shots", "4", "--unlabeled", "2", "--epochs", "1"],
    "roofline.py": ["--context", "600", "--queries", "4", "--inputs", "2", "--batch", "2", "--rows", "16",
                    "--repeats", "1"],
    "dtype_agreement.py": ["configs/quickstart.yaml", "data_seeds=[0]", "shots=4", "eval.max_examples=4",
                           "train.epochs=1", "include=[{method: icl}, {method: pbft, trainable: [lora]}]"],
    "cd_long_context.py": ["--teacher-length", "256", "--lengths", "256,512", "--inputs", "2", "--held-out", "2",
                           "--queries", "1", "--steps", "1", "--batch-size", "2", "--top-k", "8"],
}

#: A line each script prints only once it has measured everything (the paths' agreement, where it is exact).
EXPECT = {"icl_prefix_cache.py": "predictions identical: True (cached paths, 4), True (full, 2)",
          "pbft_vs_baseline.py": "vs reference", "cd_teacher_cache.py": "cached (shared) vs online",
          "cd_long_context.py": "break-even vs icl", "roofline.py": "LoRA student, 8 queries alone",
          "dtype_agreement.py": "training loss, 1 steps"}


SLOW = {"cd_long_context.py", "cd_teacher_cache.py", "dtype_agreement.py"}  # 10-12 s each: the slow suite's


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW else s for s in sorted(CASES)])
def test_bench_script_runs_at_tiny_size(script, tiny_models, data_dir, monkeypatch, capsys):
    path = ROOT / "bench" / script
    data = ["--data-dir", data_dir] if "--data-dir" in path.read_text() else []
    monkeypatch.setenv("ADAPTBENCH_DATA_DIR", data_dir)
    monkeypatch.setattr(sys, "argv", [str(path), "--model", tiny_models["llama"], *data, *CASES[script]])
    runpy.run_path(str(path), run_name="__main__")
    out = capsys.readouterr().out
    assert EXPECT[script] in out and len(out.splitlines()) >= 3, out


def test_bench_scripts_leave_the_precision_setting_as_they_found_it():
    """bench/dtype_agreement.py switches ADAPTBENCH_CPU_BF16 while it runs, in this process (runpy): the rest
    of the suite must still see the conftest's float32."""
    import os

    assert os.environ["ADAPTBENCH_CPU_BF16"] == "0"
