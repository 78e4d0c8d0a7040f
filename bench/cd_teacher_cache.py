"""Context distillation: teacher distributions computed once (cached) vs scored online in every batch.

    python bench/cd_teacher_cache.py                       # SmolLM2-135M, 16-shot RTE, 16 unlabelled, 2 epochs
    python bench/cd_teacher_cache.py --epochs 4 --trainable full

Both runs go through ``adaptbench run`` machinery in one process, one after the other, on the same
model, sample and inputs.  Cached: the teacher scores every distillation input once, with the
demonstration-prefix KV cache, and is freed before the student trains.  Online: a separate teacher
stays in memory and scores each batch's inputs with context + input as one sequence, every epoch.
Prints the time of teacher scoring + student training and the peak memory of each, and the ratios
(model loading is timed apart by the tool and left out of both).
"""

from __future__ import annotations

import argparse
import os
import tempfile

from adaptbench.runner import make_plan, run_sweep

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
    rows = {}
    for cached in (True, False):
        path = os.path.join(out, f"cd-{cached}.yaml")
        with open(path, "w") as f:
            f.write(CONFIG.format(cached=str(cached).lower(), **vars(args)))
        rec = run_sweep(make_plan(path, output_dir=out, data_dir=args.data_dir), force=True)[0]
        if rec["status"] != "ok":
            raise SystemExit(f"run failed: {rec.get('reason')}")
        costs = rec["costs"]
        phases = [costs[p] for p in ("teacher", "setup", "train")]
        rows["cached" if cached else "online"] = {
            "teacher_s": costs["teacher"]["seconds"], "train_s": costs["train"]["seconds"],
            "total_s": sum(p["seconds"] for p in phases),
            "peak": max(p["peak_memory_bytes"] for p in phases),
            "train_peak": costs["train"]["peak_memory_bytes"],
            "acc": rec["metrics"]["rte"]["all"]["accuracy"], "inputs": rec["method_info"]["train_examples"]}
    print(f"\n{args.model}, CD + {args.trainable}, {args.shots}-shot RTE context, {rows['cached']['inputs']} "
          f"distillation inputs, {args.epochs} epochs")
    print(f"{'':8s} {'teacher s':>10s} {'train s':>9s} {'total s':>9s} {'peak GiB':>9s} {'train-phase GiB':>16s} "
          f"{'rte acc (20)':>13s}")
    for name, r in rows.items():
        print(f"{name:8s} {r['teacher_s']:10.1f} {r['train_s']:9.1f} {r['total_s']:9.1f} {r['peak'] / 2**30:9.2f} "
              f"{r['train_peak'] / 2**30:16.2f} {r['acc']:13.3f}")
    c, o = rows["cached"], rows["online"]
    print(f"\ncached vs online: {o['total_s'] / c['total_s']:.2f}x faster, peak memory {c['peak'] / o['peak']:.2f}x")


if __name__ == "__main__":
    main()
