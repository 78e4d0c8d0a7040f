"""Long-context distillation on SmolLM2: the teacher runs once with a cached context, the student per query.

    python bench/cd_long_context.py                          # SmolLM2-135M, float32, CPU, argparse.py as context
    python bench/cd_long_context.py --lengths 4096,8192 --queries 3 --inputs 8
    python bench/cd_long_context.py --device cuda

One process, one model, three measurements (issue 11):

1. Teacher targets (``--teacher-length`` tokens of context, default 4,096): the teacher's log-probs at every
   position of each distillation input, computed (a) with the context encoded once (``PrefixCache``) and
   only the input's tokens run against it, (b) with context + input run as one sequence per input.
   Prints the positions, max |delta log p| over the whole vocabulary, the seconds of each pass (the
   cached one *including* the context's encoding; both include the log-softmax) and the speed-up.
2. Per query (each ``--lengths`` entry, default 8,192 cut to fit the window with the longest query): the
   next-token distributions at every position of one query, batch 1 -- ICL re-encoding the context,
   ICL against the context's KV cache, and the distilled student, which has the teacher's
   architecture and size and reads the query alone: its per-query cost is that of the same model
   reading the query alone (measured on the base model).  Median seconds of ``--queries`` queries
   after a warm-up, the paths taking turns query by query (so a change in the machine's load hits
   all of them alike), and peak memory per path (peak RSS on CPU, reset before every query; the rise
   above the resident memory before the query -- the weights are resident in every path -- is the
   memory ratio; the cached path's rise is counted from before its keys/values existed).  Then the one-off cost of distillation (the cached teacher pass over the distillation
   inputs + a short LoRA training through ``adaptbench.training.train`` with ``SequenceStudent`` and
   ``sequence_loss``) and the break-even query counts (``adaptbench.breakeven``).
3. Compact targets: bytes per position of the default store (``cd.store: hidden``: the teacher's final
   hidden states in float16) and of ``DEFAULT_TOP_K`` top-k targets vs the full distribution, and the
   mean |KL from the stored targets - full KL| (``topk_error`` for top-k) on held-out snippets, teacher =
   the model with the context, student = the model without it (untrained) and a "halfway" student
   (logits averaged with the teacher's).

Context: the source of a Python standard-library module (``argparse.py`` by default, ~22k SmolLM2 tokens)
cut to L tokens.  Distillation inputs and queries: short functions (30-100 tokens) of other standard-library
modules, disjoint (inputs from some modules, held-out queries from others).
"""

from __future__ import annotations

import argparse
import ast
import gc
import inspect
import statistics
import textwrap
import time

import torch

from adaptbench.breakeven import DISTILLED, ICL, ICL_CACHED, PathCost, break_even, cost_curve_table
from adaptbench.costs import CostTracker
from adaptbench.distill_targets import DEFAULT_TOP_K, compress_topk, full_bytes_per_position, full_kl, topk_error
from adaptbench.methods.cd.sequence import (SequenceStudent, compact_targets, distributions, predicted_hidden,
                                            sequence_loss)
from adaptbench.models import load_model
from adaptbench.costs import timed
from adaptbench.scoring import PrefixCache, lm_parts, sequence_hidden, vocab_logits

INPUT_MODULES = ("textwrap", "difflib", "shlex", "heapq", "string")
HELDOUT_MODULES = ("statistics", "fractions", "calendar", "bisect", "colorsys")
GiB, MiB = 2**30, 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resident_bytes(device: torch.device) -> int:
    """What is in memory now: RSS on CPU, allocated bytes on CUDA (the baseline a path's peak rises above)."""
    if device.type == "cuda":
        sync(device)
        return int(torch.cuda.memory_allocated(device))
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def release() -> None:
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def snippets(modules, tok, n: int, lo: int, hi: int, exclude: str) -> list[tuple[str, list[int]]]:
    """Up to ``n`` function definitions of ``lo``-``hi`` tokens, taken in turn from each module."""
    per_module = []
    for name in modules:
        path = inspect.getsourcefile(__import__(name))
        if path == exclude:
            continue
        src = open(path).read()
        found = []
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                text = textwrap.dedent(ast.get_source_segment(src, node, padded=True) or "")
                ids = tok(text, add_special_tokens=False)["input_ids"]
                if lo <= len(ids) <= hi:
                    found.append((f"{name}.{node.name}", ids))
        per_module.append(found)
    out = []
    for i in range(max(len(f) for f in per_module)):
        for found in per_module:
            if i < len(found) and len(out) < n:
                out.append(found[i])
    return out


def query_distributions(parts, pad, query, context=None, cache=None) -> torch.Tensor:
    """One query, batch 1: next-token log-probs at every position of the query, (len(query), vocab).

    ``context`` given: context + query run as one sequence (ICL re-encoding the context); ``cache``
    given: the query runs against the cached context; neither: the query alone (the student)."""
    with torch.inference_mode():
        if context is not None:
            hidden = sequence_hidden(parts, [list(context) + list(query)], pad)[0][len(context):]
        else:
            hidden = sequence_hidden(parts, [list(query)], pad, cache)[0]
        return torch.log_softmax(vocab_logits(parts, hidden), dim=-1)


def fmt_n(n: float | None) -> str:
    return "never" if n is None else f"{n:.1f} (first whole: {int(-(-n // 1))})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context-file", default=None,
                    help="text whose tokens are the context (default: the source of the standard library's argparse)")
    ap.add_argument("--teacher-length", type=int, default=4096,
                    help="context tokens for the teacher-target check (outcome 1)")
    ap.add_argument("--lengths", default="8192",
                    help="context lengths (comma-separated) for the per-query comparison and break-even; each is "
                         "cut to fit the window with the longest query; outcome 2 is judged at the largest")
    ap.add_argument("--inputs", type=int, default=16, help="distillation inputs (teacher pass, student training)")
    ap.add_argument("--heldout", type=int, default=8, help="held-out snippets (outcome 3; queries are taken from them)")
    ap.add_argument("--queries", type=int, default=5, help="timed queries per path (median), after one warm-up")
    ap.add_argument("--min-tokens", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--full-batch-size", type=int, default=1,
                    help="inputs per forward on the re-encoding teacher path (context + input each)")
    ap.add_argument("--cached-batch-size", type=int, default=4, help="inputs per forward on the cached teacher path")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--train-epochs", type=int, default=2, help="student training: epochs over the inputs (LoRA)")
    ap.add_argument("--train-batch-size", type=int, default=8)
    ap.add_argument("--lora-lr", type=float, default=1e-3)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.heldout < args.queries + 1:
        ap.error("--heldout must be at least --queries + 1 (one held-out snippet is the warm-up query)")

    wall0 = time.perf_counter()
    loaded, t_load = timed(lambda: load_model(args.model, dtype=args.dtype, device=args.device), torch.device("cpu"))
    model, tok, device, window = loaded.model, loaded.tokenizer, loaded.device, loaded.window
    parts, pad = lm_parts(model), tok.pad_token_id
    context_file = args.context_file or inspect.getsourcefile(argparse)
    context_all = tok(open(context_file).read(), add_special_tokens=False)["input_ids"]
    has_start = bool(tok("x")["input_ids"] != tok("x", add_special_tokens=False)["input_ids"])
    inputs = snippets(INPUT_MODULES, tok, args.inputs, args.min_tokens, args.max_tokens, context_file)
    held = snippets(HELDOUT_MODULES, tok, args.heldout, args.min_tokens, args.max_tokens, context_file)
    input_ids, held_ids = [x for _, x in inputs], [x for _, x in held]
    longest = max(len(x) for x in input_ids + held_ids)
    if has_start:
        raise SystemExit(f"{args.model}'s tokenizer adds a start token; this benchmark handles tokenizers without one")
    print(f"model {args.model} ({loaded.dtype}, {device}, window {window}), loaded in {t_load:.1f} s; torch threads "
          f"{torch.get_num_threads()}")
    print(f"context: {context_file} ({len(context_all)} tokens)")
    print(f"distillation inputs: {len(input_ids)} functions of {', '.join(INPUT_MODULES)} "
          f"({sum(map(len, input_ids))} tokens, {min(map(len, input_ids))}-{max(map(len, input_ids))} each)")
    print(f"held-out snippets: {len(held_ids)} functions of {', '.join(HELDOUT_MODULES)} "
          f"({sum(map(len, held_ids))} tokens); queries: the first {args.queries}, warm-up: the last")
    tracker = CostTracker(device=device)
    summary = {}

    # ---------------------------------------------------------------- 1. teacher targets, cached vs re-encoded
    L1 = min(args.teacher_length, window - longest)
    ctx1 = context_all[:L1]
    if len(ctx1) < L1:
        raise SystemExit(f"the context file has only {len(context_all)} tokens; need {L1}")
    print(f"\n== 1. teacher targets at L = {L1} context tokens, {len(input_ids)} inputs")
    # warm-up of both paths on a 64-token context (first calls allocate and pick kernels)
    timed(lambda: predicted_hidden(parts, ctx1[:64], input_ids[:1], has_start, pad, None), device)
    timed(lambda: predicted_hidden(parts, ctx1[:64], input_ids[:1], has_start, pad,
                                   PrefixCache.encode(parts, ctx1[:64])), device)

    def cached_pass():
        cache = PrefixCache.encode(parts, ctx1)
        hidden = predicted_hidden(parts, ctx1, input_ids, has_start, pad, cache, batch_size=args.cached_batch_size)
        return cache, torch.cat([distributions(parts, h, 1.0) for h in hidden])

    def full_pass():
        hidden = predicted_hidden(parts, ctx1, input_ids, has_start, pad, None, batch_size=args.full_batch_size)
        return torch.cat([distributions(parts, h, 1.0) for h in hidden])

    (cache1, lp_cached), t_cached = timed(cached_pass, device)
    print(f"cached (encode context once + {len(input_ids)} inputs against it): {t_cached:.1f} s", flush=True)
    lp_full, t_full = timed(full_pass, device)
    print(f"re-encoded (context + input per input, batch {args.full_batch_size}): {t_full:.1f} s", flush=True)
    delta = (lp_cached - lp_full).abs()
    max_delta = float(delta.max())
    k = min(args.top_k, lp_full.shape[1])
    top_same = float((torch.topk(lp_cached, k).indices == torch.topk(lp_full, k).indices).all(dim=1).float().mean())
    speedup1 = t_full / t_cached
    print(f"positions {lp_full.shape[0]}, vocabulary {lp_full.shape[1]}: max |delta log p| = {max_delta:.2e} "
          f"(over every token of every position), mean {float(delta.mean()):.1e}; top-{k} ids identical at "
          f"{top_same:.1%} of positions")
    print(f"speed-up of the cached teacher pass (context encoding included): {speedup1:.1f}x")
    summary["1"] = dict(L=L1, positions=lp_full.shape[0], max_delta=max_delta, t_cached=t_cached, t_full=t_full,
                        speedup=speedup1, ok=max_delta <= 1e-4 and speedup1 >= 5)
    del lp_cached, lp_full, delta
    release()

    # ---------------------------------------------------------------- 3. compact targets (teacher: L1 context)
    print(f"\n== 3. compact targets on {len(held_ids)} held-out snippets, teacher = model with the {L1}-token context, "
          f"student = model without it")
    t_hidden = predicted_hidden(parts, ctx1, held_ids, has_start, pad, cache1, batch_size=args.cached_batch_size)
    teacher_lp = torch.cat([distributions(parts, h, 1.0) for h in t_hidden])
    with torch.inference_mode():
        student_logits = torch.cat([vocab_logits(parts, sequence_hidden(parts, [x], pad)[0]).cpu() for x in held_ids])
    halfway = (student_logits + teacher_lp) / 2  # log-probs differ from logits by a per-row constant only
    targets3 = compress_topk(teacher_lp, args.top_k)
    full_b = full_bytes_per_position(teacher_lp.shape[1])
    bpp = targets3.bytes_per_position
    rest_mass = float(targets3.rest.exp().mean())
    rows3 = {}
    for name, logits in (("untrained student", student_logits), ("halfway student", halfway)):
        err = topk_error(teacher_lp, logits, args.top_k)
        kl = float(full_kl(teacher_lp, logits).mean())
        rows3[name] = (err, kl)
        print(f"{name:18s}: mean |compact KL - full KL| = {err:.4f} nats/position (full KL {kl:.3f})")
    print(f"positions {teacher_lp.shape[0]}; top_k {targets3.k}: {bpp:,} bytes/position vs {full_b:,} for the full "
          f"float32 distribution = {bpp / full_b:.2%}; mean rest mass {rest_mass:.3f}")
    # the default store (cd.store: hidden): the teacher's final hidden states in float16, rebuilt through its head
    rebuilt = torch.cat([distributions(parts, h.half().float(), 1.0) for h in t_hidden])
    hidden_bpp = 2 * t_hidden[0].shape[-1]
    hidden_err = {}
    for name, logits in (("untrained student", student_logits), ("halfway student", halfway)):
        lq = torch.log_softmax(logits.float(), dim=-1)
        full = full_kl(teacher_lp, logits)
        approx = (rebuilt.exp() * (rebuilt - lq)).sum(-1)
        hidden_err[name] = float((approx - full).abs().mean())
        print(f"store hidden, {name:18s}: mean |KL from float16 hidden states - full KL| = {hidden_err[name]:.2e} "
              f"nats/position")
    print(f"store hidden (the default): {hidden_bpp:,} bytes/position = {hidden_bpp / full_b:.2%} of the full "
          f"distribution")
    err_untrained = rows3["untrained student"][0]
    hidden_ok = hidden_bpp / full_b <= 0.01 and hidden_err["untrained student"] <= 1e-3
    summary["3"] = dict(k=targets3.k, bpp=bpp, full=full_b, frac=bpp / full_b, err=err_untrained,
                        err_half=rows3["halfway student"][0], topk_ok=bpp / full_b <= 0.01 and err_untrained <= 1e-3,
                        positions=teacher_lp.shape[0], rest=rest_mass, hidden_bpp=hidden_bpp,
                        hidden_err=hidden_err["untrained student"], hidden_err_half=hidden_err["halfway student"],
                        ok=hidden_ok)
    del cache1, t_hidden, teacher_lp, student_logits, halfway, targets3, rebuilt
    release()

    # ---------------------------------------------------------------- 2. per query, one-off cost, break-even
    queries, warm = held_ids[:args.queries], held_ids[-1]
    print(f"\n== 2. per query: next-token distributions at every position of one query (batch 1), median of "
          f"{len(queries)} queries ({', '.join(str(len(q)) for q in queries)} tokens) after one warm-up per path;")
    print("   the three paths take turns query by query (the machine's load changes over minutes), each query in its "
          "own memory phase")
    print("   the student is the same model reading the query alone: a distilled student has the teacher's "
          "architecture and size, so its per-query cost is that of the model without the context")
    lengths = sorted({min(int(x), window - longest) for x in args.lengths.split(",")})
    curve, per_length = [], {}
    for L in lengths:
        ctx = context_all[:L]
        if len(ctx) < L:
            raise SystemExit(f"the context file has only {len(context_all)} tokens; need {L}")
        print(f"-- L = {L} context tokens")
        release()
        before_cache = resident_bytes(device)
        with tracker.phase(f"encode_{L}"):
            cache, t_encode = timed(lambda: PrefixCache.encode(parts, ctx), device)
        print(f"context encoded once in {t_encode:.1f} s ({cache.nbytes / MiB:.0f} MiB of keys/values; resident "
              f"before it: {before_cache / GiB:.2f} GiB)", flush=True)
        runs = {"icl": lambda q: query_distributions(parts, pad, q, context=ctx),
                "icl_cached": lambda q: query_distributions(parts, pad, q, cache=cache),
                "student": lambda q: query_distributions(parts, pad, q)}
        # warm-ups; the re-encoding path's reads the first 512 context tokens only (a full-length warm-up costs as
        # much as a timed query, and the median is robust to one cold call)
        timed(lambda: query_distributions(parts, pad, warm, context=ctx[:512]), device)
        timed(lambda: runs["icl_cached"](warm), device)
        timed(lambda: runs["student"](warm), device)
        res = {name: {"seconds": [], "cpu": [], "rise": []} for name in runs}
        for i, q in enumerate(queries):
            for name, run in runs.items():
                with tracker.phase(f"{name}_{L}_q{i}"):
                    start_resident = resident_bytes(device)
                    cpu0 = time.process_time()
                    out, t = timed(lambda: run(q), device)
                    cpu = time.process_time() - cpu0
                    del out
                peak = tracker.to_dict()[f"{name}_{L}_q{i}"]["peak_memory_bytes"]
                # the cached path's rise counts its keys/values (they exist for it alone): measured from before them
                base = before_cache if name == "icl_cached" else start_resident
                r = res[name]
                r["seconds"].append(t)
                r["cpu"].append(cpu)
                r["rise"].append(max(peak - base, 0))
            print(f"  query {i} ({len(q)} tokens): " + ", ".join(
                f"{n} {res[n]['seconds'][-1]:.2f} s" for n in runs), flush=True)
        for name, r in res.items():
            r["median_s"] = statistics.median(r["seconds"])
            r["median_cpu"] = statistics.median(r["cpu"])
            r["rise"] = max(r["rise"])
            r["peak"] = before_cache + r["rise"]  # as if only the weights (and this path's own data) were resident
            print(f"{name:10s}: {r['median_s']:8.3f} s/query (median; CPU {r['median_cpu']:.3f} s), peak "
                  f"{r['peak'] / GiB:.2f} GiB, rise {r['rise'] / MiB:.1f} MiB")
        with tracker.phase(f"teacher_{L}"):
            def teacher():
                hidden = predicted_hidden(parts, ctx, input_ids, has_start, pad, cache,
                                          batch_size=args.cached_batch_size)
                return compact_targets(parts, hidden, 1.0, args.top_k)
            targets, t_teacher = timed(teacher, device)
        teacher_peak = tracker.to_dict()[f"teacher_{L}"]["peak_memory_bytes"]
        print(f"teacher pass over the {len(input_ids)} inputs against the cache (top-{args.top_k} targets): "
              f"{t_teacher:.1f} s + encoding {t_encode:.1f} s = {t_teacher + t_encode:.1f} s", flush=True)
        per_length[L] = dict(icl=res["icl"], cached=res["icl_cached"], student=res["student"], t_encode=t_encode,
                             t_teacher=t_teacher + t_encode, teacher_peak=teacher_peak, targets=targets,
                             cache_bytes=cache.nbytes)
        del cache, runs
        release()

    # student training (once: its cost does not depend on L), on the targets of the largest L; LoRA is injected
    # into the model in place, so this comes after every other measurement
    from adaptbench.packing import packing_works
    from adaptbench.progress import make_progress
    from adaptbench.settings import LoraSettings, TrainSettings
    from adaptbench.trainable import apply_policy
    from adaptbench.training import TrainItem, train

    L_max = lengths[-1]
    flat = per_length[L_max]["targets"]
    bounds = torch.tensor([0] + [len(x) for x in input_ids]).cumsum(0).tolist()
    targets = [flat.rows(a, b) for a, b in zip(bounds, bounds[1:])]
    settings = TrainSettings(epochs=args.train_epochs, batch_size=args.train_batch_size, lr=args.lora_lr,
                             warmup_ratio=0.0, schedule="constant")
    with tracker.phase("train") as phase:
        start = time.perf_counter()
        student_model = SequenceStudent(model, [])
        policy = apply_policy(student_model, "lora", lora=LoraSettings())
        packed = packing_works(student_model.lm)

        def loss_fn(hidden, target):
            idx = target[:, 0].long().tolist()
            return sequence_loss(lm_parts(student_model.lm), hidden, [len(input_ids[i]) for i in idx],
                                 [targets[i] for i in idx], 1.0)

        items = [TrainItem(list(x), torch.tensor([float(j)])) for j, x in enumerate(input_ids)]
        log = train(student_model, items, settings, loss_fn=loss_fn, pad_id=pad, seed=0, device=device,
                    progress=make_progress(False), packed=packed)
        sync(device)
        t_train = time.perf_counter() - start
    train_peak = tracker.to_dict()["train"]["peak_memory_bytes"]
    print(f"\nstudent training: LoRA (r 8, {policy['trainable_params']:,} trainable parameters), lr {args.lora_lr}, "
          f"{log.steps} steps of batch {args.train_batch_size} ({args.train_epochs} epochs over the {len(input_ids)} "
          f"inputs, packed {packed}) through adaptbench.training.train with SequenceStudent + sequence_loss "
          f"(top-{args.top_k} targets of L = {L_max}): {t_train:.1f} s ({t_train / max(log.steps, 1):.1f} s/step), "
          f"losses {', '.join(f'{x:.3f}' for x in log.losses)}")

    print("\n== break-even (distilled = cached teacher pass at L + the training above; per query = medians above)")
    for L in lengths:
        r = per_length[L]
        paths = {
            ICL: PathCost(ICL, 0.0, r["icl"]["median_s"], r["icl"]["peak"]),
            ICL_CACHED: PathCost(ICL_CACHED, r["t_encode"], r["cached"]["median_s"], r["cached"]["peak"]),
            DISTILLED: PathCost(DISTILLED, r["t_teacher"] + t_train, r["student"]["median_s"],
                                max(r["student"]["peak"], r["teacher_peak"], train_peak)),
        }
        r["paths"] = paths
        r["n_icl"] = break_even(paths[ICL], paths[DISTILLED])
        r["n_cached"] = break_even(paths[ICL_CACHED], paths[DISTILLED])
        r["n_cached_vs_icl"] = break_even(paths[ICL], paths[ICL_CACHED])
        curve.append((L, paths))
    import pandas as pd

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        table = cost_curve_table(curve)
        table["peak_memory_gib"] = table.pop("peak_memory_bytes") / GiB
        print(table.to_string(index=False))
    print("(peak memory of `distilled`: the largest of the teacher pass, the training and the student's queries)")

    # ---------------------------------------------------------------- summary
    r = per_length[L_max]
    icl, cached, student = r["icl"], r["cached"], r["student"]
    t_ratio = icl["median_s"] / student["median_s"]
    m_ratio = icl["rise"] / max(student["rise"], 1)
    abs_ratio = icl["peak"] / student["peak"]
    s1, s3 = summary["1"], summary["3"]
    ok2 = t_ratio >= 10 and m_ratio >= 10
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    mem = "peak RSS" if device.type == "cpu" else "peak CUDA allocation"
    print("\n================ summary ================")
    print(f"wall time {time.perf_counter() - wall0:.0f} s ({args.model}, {loaded.dtype}, {device}, "
          f"{torch.get_num_threads()} torch threads)")
    print(f"[1] L = {s1['L']}: {s1['positions']} positions of {len(input_ids)} inputs, max |delta log p| = "
          f"{s1['max_delta']:.2e} (<= 1e-4: {s1['max_delta'] <= 1e-4}); cached {s1['t_cached']:.1f} s (encoding "
          f"included) vs re-encoded {s1['t_full']:.1f} s = {s1['speedup']:.1f}x (>= 5x: {s1['speedup'] >= 5})"
          f"  -> {verdict(s1['ok'])}")
    print(f"[2] L = {L_max}: per query ICL re-encoded {icl['median_s']:.2f} s vs student {student['median_s']:.3f} s "
          f"= {t_ratio:.1f}x (>= 10x: {t_ratio >= 10}); {mem} rise above the resident weights "
          f"{icl['rise'] / MiB:.1f} vs {student['rise'] / MiB:.1f} MiB = {m_ratio:.1f}x (>= 10x: {m_ratio >= 10})"
          f"  -> {verdict(ok2)}")
    print(f"    CPU seconds per query (less sensitive to other processes' load): {icl['median_cpu']:.2f} vs "
          f"{student['median_cpu']:.3f} = {icl['median_cpu'] / student['median_cpu']:.1f}x")
    print(f"    absolute peaks {icl['peak'] / GiB:.2f} vs {student['peak'] / GiB:.2f} GiB = {abs_ratio:.2f}x "
          f"(resident before the context's cache + the path's rise; dominated by the weights, resident in both: "
          f"the ratio of the rises is the memory ratio)")
    print(f"    ICL cached: {cached['median_s']:.3f} s/query ({cached['median_s'] / student['median_s']:.1f}x the "
          f"student), rise {cached['rise'] / MiB:.1f} MiB incl. {r['cache_bytes'] / MiB:.0f} MiB of keys/values "
          f"({cached['rise'] / max(student['rise'], 1):.1f}x), encode {r['t_encode']:.1f} s")
    print(f"    one-off distillation {r['t_teacher'] + t_train:.1f} s (teacher {r['t_teacher']:.1f} s + "
          f"{log.steps}-step LoRA training {t_train:.1f} s); break-even vs ICL re-encoded: {fmt_n(r['n_icl'])} "
          f"queries; vs ICL cached: {fmt_n(r['n_cached'])} queries")
    print(f"[3] default store (hidden): {s3['hidden_bpp']:,} of {s3['full']:,} bytes/position = "
          f"{s3['hidden_bpp'] / s3['full']:.2%} (<= 1%: {s3['hidden_bpp'] / s3['full'] <= 0.01}); mean KL error "
          f"{s3['hidden_err']:.1e} nats/position untrained student, {s3['hidden_err_half']:.1e} halfway "
          f"({s3['positions']} held-out positions) (<= 1e-3: {s3['hidden_err'] <= 1e-3})  -> {verdict(s3['ok'])}")
    print(f"    store topk, top_k {s3['k']}: {s3['bpp']:,} bytes/position = {s3['frac']:.2%}; mean KL error "
          f"{s3['err']:.4f} untrained, {s3['err_half']:.4f} halfway (rest mass {s3['rest']:.3f}) -> "
          f"{verdict(s3['topk_ok'])} (what top-k cannot see: p_rest x KL(tails))")


if __name__ == "__main__":
    main()
