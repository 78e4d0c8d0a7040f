"""How much bfloat16 changes adaptbench's results: the same runs in float32 and in bfloat16, compared.

    python bench/dtype_agreement.py configs/quickstart.yaml             # runs it both ways, then compares
    python bench/dtype_agreement.py CONFIG key=value ... --out DIR      # overrides as for `adaptbench run`
    python bench/dtype_agreement.py --compare RESULTS_A RESULTS_B       # two finished sweeps

The config runs twice through adaptbench, once with ``ADAPTBENCH_CPU_BF16=0`` (``auto``: float32 weights,
no autocast) and once with ``=1`` (``auto``: bfloat16 weights for scoring, bf16 autocast over float32
master weights for training), so each run of one is a run of the other but for what ``auto`` resolved to.
Runs are paired by their settings but their precision; for each pair and eval set it prints the share of
identical predictions (with n and a Wilson 95 % interval), the max and mean |delta log p| of the
verbalizer tokens, the largest margin (|log p(yes) - log p(no)| of the reference) among the predictions that
differ -- how close to a tie the flipped examples were -- and both accuracies, and for training runs the per-step relative |delta| of the training loss.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from adaptbench._util.cpu import ENV
from adaptbench.measure.shares import wilson_interval
from adaptbench.store.results import read_results


def pair_key(spec: dict) -> str:
    """A run's settings but its precision: ``resolved``, ``model.dtype`` and ``train.mixed_precision`` left out
    (so a run with ``auto`` pairs with its twin that wrote ``float32`` out)."""
    spec = {k: v for k, v in spec.items() if k != "resolved"}
    spec["model"] = {k: v for k, v in spec["model"].items() if k != "dtype"}
    if "train" in spec:
        spec["train"] = {k: v for k, v in spec["train"].items() if k != "mixed_precision"}
    return json.dumps(spec, sort_keys=True)


def runs_of(results_dir: str) -> dict[str, tuple[dict, Path]]:
    out = {}
    found = read_results(results_dir)
    for rec in (r.model_dump(mode="json", serialize_as_any=True) for r in found.records):
        if rec.get("status") == "ok":
            sweep = found.found_in[rec["run_id"]][0]
            out[pair_key(rec["spec"])] = (rec, Path(sweep) / "runs" / rec["run_id"] / "predictions.jsonl")
    return out


def predictions(path: Path) -> dict[tuple[str, int], dict]:
    with open(path, encoding="utf-8") as f:
        return {(row["eval_set"], row["idx"]): row for row in map(json.loads, f)}


def compare(dir_a: str, dir_b: str) -> list[dict]:
    """One row per paired run and eval set (a: the reference, usually float32)."""
    a_runs, b_runs = runs_of(dir_a), runs_of(dir_b)
    rows = []
    for key in sorted(set(a_runs) & set(b_runs)):
        (ra, pa), (rb, pb) = a_runs[key], b_runs[key]
        a, b = predictions(pa), predictions(pb)
        spec = ra["spec"]
        name = " ".join(str(x) for x in (spec["method"], spec.get("trainable") or "", f"k={spec['shots']}",
                                         f"seed {spec['data_seed']}") if x)
        for eval_set in sorted({s for s, _ in a}):
            ids = [k for k in a if k[0] == eval_set and k in b]
            same = sum(a[k]["pred"] == b[k]["pred"] for k in ids)
            delta = np.abs(np.array([a[k]["label_logprobs"] for k in ids]) - np.array([b[k]["label_logprobs"]
                                                                                      for k in ids]))
            # how close to a tie the reference was where the two disagree: within bf16's noise, or not
            margins = [abs(a[k]["label_logprobs"][0] - a[k]["label_logprobs"][1]) for k in ids
                       if a[k]["pred"] != b[k]["pred"]]
            acc = [sum(x[k]["pred"] == x[k]["label"] for k in ids) / len(ids) for x in (a, b)]
            rows.append({"run": name, "eval_set": eval_set, "n": len(ids), "same": same,
                         "max": float(delta.max()), "mean": float(delta.mean()),
                         "flip_margin": max(margins, default=None), "accuracy": acc})
        la, lb = ra["method_info"].get("train_losses"), rb["method_info"].get("train_losses")
        if la and lb and len(la) == len(lb):
            rel = np.abs(np.array(la) - np.array(lb)) / np.maximum(np.abs(np.array(la)), 1e-12)
            rows.append({"run": name, "losses": len(la), "rel_max": float(rel.max()), "rel_mean": float(rel.mean()),
                         "dtypes": (ra["spec"].get("resolved", {}), rb["spec"].get("resolved", {}))})
    unpaired = len(set(a_runs) ^ set(b_runs))
    if unpaired:
        print(f"{unpaired} runs without a partner (not ok in one sweep, or other settings) left out")
    return rows


def show(rows: list[dict]) -> None:
    print(f"{'run':24s} {'eval set':10s} {'n':>6s} {'identical':>10s} {'95% CI':>17s} {'max|dlogp|':>11s} "
          f"{'mean|dlogp|':>12s} {'flips: max margin':>18s} {'accuracy a -> b':>16s}")
    total_n = total_same = 0
    for r in rows:
        if "losses" in r:
            print(f"{r['run']:24s} training loss, {r['losses']} steps: relative |delta| max {r['rel_max']:.2e}, "
                  f"mean {r['rel_mean']:.2e}")
            continue
        lo, hi = wilson_interval(r["same"], r["n"])
        total_n, total_same = total_n + r["n"], total_same + r["same"]
        flips = "-" if r["flip_margin"] is None else f"{r['flip_margin']:.3f}"
        print(f"{r['run']:24s} {r['eval_set']:10s} {r['n']:6d} {r['same'] / r['n']:10.2%} "
              f"{f'[{lo:.4f}, {hi:.4f}]':>17s} {r['max']:11.2e} {r['mean']:12.2e} {flips:>18s} "
              f"{r['accuracy'][0]:7.3f} -> {r['accuracy'][1]:.3f}")
    if total_n:
        lo, hi = wilson_interval(total_same, total_n)
        print(f"all: {total_same} of {total_n} predictions identical ({total_same / total_n:.2%}, 95% CI "
              f"[{lo:.4f}, {hi:.4f}])")


def run_both(config: str, overrides: list[str], out: str) -> tuple[str, str]:
    import adaptbench

    dirs, before = [], os.environ.get(ENV)
    try:
        for flag, label in (("0", "float32"), ("1", "bfloat16")):
            os.environ[ENV] = flag
            records = adaptbench.run(config, [*overrides, "runtime.progress=false"],
                                     output_dir=os.path.join(out, label))
            dirs.append(os.path.join(out, label, records[0]["sweep"]))
            print(f"{label}: {len(records)} runs, {sum(r['status'] == 'ok' for r in records)} ok")
    finally:  # the caller's setting back (this runs in-process in the test suite)
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before
    return dirs[0], dirs[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--compare", nargs=2, metavar=("RESULTS_A", "RESULTS_B"))
    ap.add_argument("--out", default=None, help="where the two sweeps go (default: a temporary folder)")
    ap.add_argument("--model", default=None, help="override the config's model")
    args = ap.parse_intermixed_args()
    if args.compare:
        show(compare(*args.compare))
        return
    if not args.config:
        sys.exit("give a config to run both ways, or --compare RESULTS_A RESULTS_B")
    with tempfile.TemporaryDirectory() as tmp:
        overrides = [*([f"model={args.model}"] if args.model else []), *args.overrides]
        a, b = run_both(args.config, overrides, args.out or tmp)
        show(compare(a, b))


if __name__ == "__main__":
    main()
