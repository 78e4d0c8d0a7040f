"""Context distillation's teacher: leave-one-out contexts sharing their common KV prefix, and teacher
distributions computed once (cached) vs scored online in every batch.

    python bench/cd_teacher_cache.py                       # SmolLM2-135M, 16-shot RTE, 16 unlabelled, 2 epochs
    python bench/cd_teacher_cache.py --unlabeled 0         # the quickstart's CD run (16 labelled inputs only)
    python bench/cd_teacher_cache.py --epochs 4 --trainable full

All runs go through ``adaptbench run`` machinery in one process, one after the other, on the same
model, sample and inputs:

* ``shared``: the teacher scores every distillation input once; each labelled input i gets the
  leave-one-out context (the other k - 1 demonstrations), and context i reuses the keys/values of the
  tokens it shares with context i - 1 (demonstrations 0..i-2) -- only the rest is run.
* ``alone``: the same, but every leave-one-out context is encoded from its first token (before).
* ``online``: a separate teacher stays in memory and scores each batch's inputs with context + input
  as one sequence, every epoch.

Prints the teacher phase's seconds of ``shared`` vs ``alone`` and the max |delta| of their targets
(``teacher_targets.safetensors``), then time of teacher scoring + student training and the peak memory
of each, and the ratios (model loading is timed apart by the tool and left out).  Leave-one-out
contexts i - 1 and i share their first i - 1 demonstrations, so the demonstrations encoded drop from
k (k - 1) to (k - 1) + k (k - 1) / 2 = (k - 1)(k + 2) / 2: the bound on the speed-up of the encoding
is 2k / (k + 2), 1.78x at k = 16 (less in time: the queries are scored as before).
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
from safetensors.numpy import load_file

from adaptbench.scoring.context import LocalContextScorer
from adaptbench.sweep.plan import make_plan
from adaptbench.sweep.runner import run_sweep

CONFIG = """# adaptbench run cd-bench.yaml
name: cd-bench
model: {model}
task: rte
method: cd
trainable: {trainable}
shots: {shots}
data_seeds: [0]
cd: {{unlabeled: {unlabeled}, teacher_cache: {cached}}}
train: {{epochs: {epochs}, batch_size: 8, lr: 1.0e-4, warmup_ratio: 0.1, schedule: constant}}
lora: {{lr: 1.0e-3}}
bitfit: {{add_biases: true}}
eval: {{max_examples: 20}}
runtime: {{progress: true}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--unlabeled", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--trainable", default="lora", choices=["full", "lora", "bitfit"])
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    out = tempfile.mkdtemp(prefix="cd-bench-")
    rows, targets = {}, {}
    for name, cached, shared in (("shared", True, True), ("alone", True, False), ("online", False, True)):
        path = os.path.join(out, f"cd-{name}.yaml")
        with open(path, "w") as f:
            f.write(CONFIG.format(cached=str(cached).lower(), **vars(args)))
        LocalContextScorer.share_prefixes = shared
        rec = run_sweep(make_plan(path, output_dir=os.path.join(out, name), data_dir=args.data_dir), force=True)[0]
        if rec["status"] != "ok":
            raise SystemExit(f"run failed: {rec.get('reason')}")
        if rec["method_info"].get("teacher_targets"):
            targets[name] = load_file(rec["method_info"]["teacher_targets"])["targets"]
        costs = rec["costs"]
        phases = [costs[p] for p in ("teacher", "setup", "train")]
        rows[name] = {
            "teacher_s": costs["teacher"]["seconds"], "train_s": costs["train"]["seconds"],
            "total_s": sum(p["seconds"] for p in phases),
            "peak": max(p["peak_memory_bytes"] for p in phases),
            "train_peak": costs["train"]["peak_memory_bytes"],
            "acc": rec["metrics"]["rte"]["all"]["accuracy"], "inputs": rec["method_info"]["train_examples"]}
    LocalContextScorer.share_prefixes = True
    print(f"\n{args.model}, CD + {args.trainable}, {args.shots}-shot RTE context, {rows['shared']['inputs']} "
          f"distillation inputs ({min(args.shots, rows['shared']['inputs'])} with leave-one-out contexts), "
          f"{args.epochs} epochs")
    print(f"{'':8s} {'teacher s':>10s} {'train s':>9s} {'total s':>9s} {'peak GiB':>9s} {'train-phase GiB':>16s} "
          f"{'rte acc (20)':>13s}")
    for name, r in rows.items():
        print(f"{name:8s} {r['teacher_s']:10.1f} {r['train_s']:9.1f} {r['total_s']:9.1f} {r['peak'] / 2**30:9.2f} "
              f"{r['train_peak'] / 2**30:16.2f} {r['acc']:13.3f}")
    c, a, o = rows["shared"], rows["alone"], rows["online"]
    delta = float(np.abs(targets["shared"] - targets["alone"]).max())
    print(f"\nteacher phase, leave-one-out prefixes shared vs each encoded alone: {a['teacher_s']:.1f} s -> "
          f"{c['teacher_s']:.1f} s = {a['teacher_s'] / c['teacher_s']:.2f}x; max |delta| of the targets {delta:.1e}")
    print(f"cached (shared) vs online: {o['total_s'] / c['total_s']:.2f}x faster, peak memory "
          f"{c['peak'] / o['peak']:.2f}x")


if __name__ == "__main__":
    main()
