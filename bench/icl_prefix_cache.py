"""ICL scoring: three ways to score queries after the same demonstrations, at several context lengths.

    python bench/icl_prefix_cache.py                                # SmolLM2-135M, RTE demos, HANS queries
    python bench/icl_prefix_cache.py --lengths 1500,4096,8000 --examples 64 --full-examples 8
    python bench/icl_prefix_cache.py --device cuda --batch-sizes 64 --examples 512

* ``full``: context + query as one sequence for every example (the reference implementation and
  lm-evaluation-harness).
* ``expanded``: the context encoded once (KV cache), only the query tokens run per example; every row
  of a batch reads its own expanded copy of the prefix keys/values in every layer (adaptbench before
  issue 15).
* ``shared``: the same cache, and all queries of a batch attend to the one copy of the prefix together
  (:mod:`adaptbench.shared_prefix`: one matrix product per key head, the causal part per row, merged by
  log-sum-exp).

For each context length L: the context is RTE training demonstrations (balanced, seeded), as many as
fit in L tokens; the queries are HANS lexical-overlap examples (~18 tokens); one process, the paths
taking turns (``--repeats`` rounds; the fastest pass of each counts, as ``timeit`` does: a shared
machine's speed varies from minute to minute), a warm-up call of each first.  Prints examples/s of
each path (context encoding excluded: it is the same one-off cost for both cached paths), the
speed-ups, peak memory (CUDA) and the agreement of predictions and label log-probabilities with the
full path (on the examples it scored) and between the two cached paths (on all).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from adaptbench.config.schema import PromptSpec
from adaptbench.measure.costs import timed
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import largest_fitting_sample
from adaptbench.scoring.core import PrefixCache, score
from adaptbench.models.interface import lm_parts
from adaptbench.data import eval_examples, get_eval_set, get_task, resolve_data_dir, train_pool


def context_of(enc: PromptEncoder, pool, length: int, seed: int, n_labels: int) -> tuple[list, list[int]]:
    """The most demonstrations (balanced sample, growing k) whose context fits ``length`` tokens."""
    sample = largest_fitting_sample(pool, seed, n_labels, lambda s: len(enc.encode(enc.context_text(s))) <= length)
    if not sample:
        raise SystemExit(f"not even 2 demonstrations fit {length} tokens")
    return sample, enc.encode(enc.context_text(sample))


def peak(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--lengths", default="1500,4096,8000", help="context lengths in tokens (comma-separated)")
    ap.add_argument("--examples", type=int, default=96, help="HANS queries scored by the cached paths")
    ap.add_argument("--full-examples", type=int, default=8, help="of them, scored by the full path too")
    ap.add_argument("--batch-sizes", default="8,32", help="batch sizes of the cached paths")
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of each cached path; the fastest counts")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    task = get_task("rte")
    data_dir = resolve_data_dir(args.data_dir)
    pool = train_pool(task, data_dir)
    hans, _ = eval_examples(get_eval_set("hans", task), data_dir, max_examples=args.examples, seed=0)
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    device = loaded.device
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"model {args.model} ({loaded.dtype}, {device}, window {loaded.window}), {len(hans)} HANS queries, "
          f"torch threads {torch.get_num_threads()}")
    summary = []
    for length in [min(int(x), loaded.window - 64) for x in args.lengths.split(",")]:
        sample, _ = context_of(enc, pool, length, args.data_seed, len(task.labels.names))
        context, queries = enc.icl_inputs(sample, hans)
        print(f"\n== L = {len(context)} context tokens ({len(sample)} RTE demonstrations); queries "
              f"{np.mean([len(q) for q in queries]):.1f} tokens on average (max {max(map(len, queries))})")
        expanded = PrefixCache.encode(parts, context, shared=False)
        shared, t_encode = timed(lambda: PrefixCache.encode(parts, context, shared=True), device)
        print(f"context encoded once in {t_encode:.1f} s ({shared.nbytes / 2**20:.0f} MiB of keys/values)")
        for cache in (expanded, shared):  # warm-up
            score(parts, queries[:2], enc.label_token_ids, pad, prefix_cache=cache, batch_size=2)
        times, peaks, rows = {}, {}, {}
        for _ in range(args.repeats):  # the paths take turns, so a slow spell of the machine hits both
            for bs in sizes:
                for name, cache in (("expanded", expanded), ("shared", shared)):
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(device)
                    s, t = timed(lambda: score(parts, queries, enc.label_token_ids, pad, prefix_cache=cache,
                                               batch_size=bs), device)
                    times.setdefault((name, bs), []).append(t)
                    peaks[(name, bs)] = max(peaks.get((name, bs), 0.0), peak(device) or 0.0)
                    rows[(name, bs)] = (s, len(queries) / min(times[(name, bs)]))
        for (name, bs), (_, rate) in rows.items():
            mem = f", peak {peaks[(name, bs)]:.2f} GiB" if device.type == "cuda" else ""
            runs = ", ".join(f"{t:.1f}" for t in times[(name, bs)])
            print(f"{name:8s} batch {bs:3d}: {rate:8.2f} examples/s (fastest of {runs} s{mem})", flush=True)
        n_full = min(args.full_examples, len(queries))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        full, t_full = timed(lambda: score(parts, queries[:n_full], enc.label_token_ids, pad, prefix_ids=context,
                                           batch_size=1), device)
        full_rate = n_full / t_full
        print(f"full     batch   1: {full_rate:8.2f} examples/s ({t_full:.1f} s for {n_full} examples)")
        best_exp = max((r for k, r in rows.items() if k[0] == "expanded"), key=lambda r: r[1])
        best_sh = max((r for k, r in rows.items() if k[0] == "shared"), key=lambda r: r[1])
        same = all((rows[("shared", b)][0].predictions == rows[("expanded", b)][0].predictions).all() for b in sizes)
        d_cached = max(float(np.abs(rows[("shared", b)][0].label_logprobs - rows[("expanded", b)][0].label_logprobs)
                             .max()) for b in sizes)
        d_full = float(np.abs(best_sh[0].label_logprobs[:n_full] - full.label_logprobs).max())
        same_full = bool((best_sh[0].predictions[:n_full] == full.predictions).all())
        print(f"shared vs expanded (best batch each): {best_sh[1] / best_exp[1]:.2f}x; vs full: "
              f"{best_sh[1] / full_rate:.1f}x; predictions identical: {same} (cached paths, {len(queries)}), "
              f"{same_full} (full, {n_full}); max |delta log p| {d_cached:.1e} vs expanded, {d_full:.1e} vs full")
        summary.append((len(context), full_rate, best_exp[1], best_sh[1], same and same_full, max(d_cached, d_full)))
    print("\n================ summary: examples/s ================")
    print(f"{'L':>6s} {'full':>8s} {'expanded':>9s} {'shared':>8s} {'shared/expanded':>16s} {'shared/full':>12s} "
          f"{'identical':>10s} {'max |d|':>8s}")
    for L, f, e, s, same, d in summary:
        print(f"{L:6d} {f:8.2f} {e:9.2f} {s:8.2f} {s / e:15.2f}x {s / f:11.1f}x {str(same):>10s} {d:8.1e}")


if __name__ == "__main__":
    main()
