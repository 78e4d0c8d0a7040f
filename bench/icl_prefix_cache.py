"""ICL scoring: demonstration-prefix KV cache + batched queries vs re-encoding the context per example.

    python bench/icl_prefix_cache.py                      # SmolLM2-135M, 16-shot RTE, 200 examples
    python bench/icl_prefix_cache.py --examples 50 --model opt-125m --device cuda

Same model, same context, same evaluation examples, both paths in one process.  Prints examples/s of
each, the speed-up, and the agreement of predicted labels and verbalizer log-probabilities.  The
full-context path is what the reference implementation (and lm-evaluation-harness) does: context +
query as one sequence for every example.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from adaptbench.config import PromptSpec
from adaptbench.models import load_model
from adaptbench.prompts import PromptEncoder
from adaptbench.resolve import resolve_prompt
from adaptbench.sampling import few_shot_sample
from adaptbench.costs import timed
from adaptbench.scoring import PrefixCache, lm_parts, score
from adaptbench.tasks import eval_examples, get_task, resolve_data_dir, train_pool


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--task", default="rte")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--examples", type=int, default=200)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--batch-sizes", default="1,4,8", help="batch sizes tried on the cached path")
    ap.add_argument("--full-batch-size", type=int, default=1, help="batch size of the full-context path")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    task = get_task(args.task)
    data_dir = resolve_data_dir(args.data_dir)
    pool = train_pool(task, data_dir)
    sample = few_shot_sample(pool, args.shots, args.data_seed, len(task.labels.names))
    evals, _ = eval_examples(task.validation, data_dir, max_examples=args.examples, seed=0)

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    device = loaded.device
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    context, queries = enc.icl_inputs(sample, evals)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    print(f"model {args.model} ({loaded.dtype}, {device}), {args.task} {args.shots}-shot: context "
          f"{len(context)} tokens, {len(queries)} queries of {np.mean([len(q) for q in queries]):.0f} tokens "
          f"on average (max {max(len(q) for q in queries)}), torch threads {torch.get_num_threads()}")

    # warm-up: one small call of each path
    score(parts, queries[:2], enc.label_token_ids, pad, prefix_ids=context, batch_size=1)
    cache, t_encode = timed(lambda: PrefixCache.encode(parts, context), device)
    print(f"context encoded once in {t_encode:.2f} s ({cache.nbytes / 2**20:.0f} MiB of keys/values)")

    cached = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        s, t = timed(lambda: score(parts, queries, enc.label_token_ids, pad, prefix_cache=cache, batch_size=bs),
                     device)
        cached[bs] = (s, t + t_encode)
        print(f"cached  batch {bs:3d}: {len(queries) / (t + t_encode):7.2f} examples/s "
              f"({t + t_encode:.1f} s incl. context encoding)")
    full, t_full = timed(lambda: score(parts, queries, enc.label_token_ids, pad, prefix_ids=context,
                                       batch_size=args.full_batch_size), device)
    print(f"full    batch {args.full_batch_size:3d}: {len(queries) / t_full:7.2f} examples/s ({t_full:.1f} s)")

    best_bs = min(cached, key=lambda b: cached[b][1])
    best, t_best = cached[best_bs]
    agree = float((best.predictions == full.predictions).mean())
    diff = float(np.abs(best.label_logprobs - full.label_logprobs).max())
    print(f"\nspeed-up (best cached, batch {best_bs}, vs full): {t_full / t_best:.1f}x")
    for bs, (s, _) in cached.items():
        print(f"  batch {bs}: agreement {float((s.predictions == full.predictions).mean()):.1%}, max |d log p| "
              f"{float(np.abs(s.label_logprobs - full.label_logprobs).max()):.2e}")
    print(f"agreement of predicted labels: {agree:.1%} ({int(agree * len(queries))}/{len(queries)}), "
          f"max |delta log p(label)| = {diff:.2e}")


if __name__ == "__main__":
    main()
