"""Long-context distillation on SmolLM2: the teacher's targets, what a query costs three ways, compact targets.

    python bench/cd_long_context.py                          # SmolLM2-135M, float32, CPU, argparse.py as context
    python bench/cd_long_context.py --lengths 2048,8000 --queries 4 --steps 16
    python bench/cd_long_context.py --device cuda

One process, three measurements:

1. **Teacher targets**, cached vs re-read, at the *same batch size* (``--batch-size``): every input read after
   the context as one text (``PromptEncoder.read_after``); (a) the shared prefix encoded once and only the
   rest of each reading run against its KV cache, (b) each reading run whole.  Prints the positions, max
   |delta log p| over the whole vocabulary and the seconds of each pass (the cached one *including* the
   context's encoding) -- the speed-up of encoding the context once.
2. **The cost curve**, measured by adaptbench itself: a sequence-distillation sweep
   (``configs/cost_curve.yaml``'s context and inputs, one run per ``--lengths`` entry) with a LoRA student
   trained ``--steps`` steps and evaluated on the held-out snippets, and ``cd.query_costs``: after a warm-up
   with the context, each path's peak memory measured on one query with only its own state resident, then
   ``--queries`` queries timed with the three paths taking turns (median).  Printed per L: seconds per query
   and peak memory of each path, the one-off costs, the break-even query counts -- beside the student's
   recovered share (at the inputs and on the teacher's replies), since a break-even says nothing about a
   student that keeps nothing.
3. **Compact targets**: bytes per position of the default store (``cd.store: hidden``: the teacher's final
   hidden states in float16) and of ``DEFAULT_TOP_K`` top-k targets vs the full distribution, and the mean
   |KL from the stored targets - full KL| on held-out snippets, teacher = the model with the context,
   student = the model without it and a "halfway" student (logits averaged with the teacher's).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch

from adaptbench.measure.costs import timed
from adaptbench.methods.cd.targets import DEFAULT_TOP_K, compress_topk, full_bytes_per_position, full_kl, topk_error
from adaptbench.methods.cd.sequence import distributions, predicted_hidden
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import Prompt, PromptEncoder
from adaptbench.scoring.core import PrefixCache, sequence_hidden
from adaptbench.models.interface import lm_parts
from adaptbench.models.parts import vocab_logits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CURVE = os.path.join(REPO, "configs", "cost_curve.yaml")
DATA = os.path.join(REPO, "configs", "data", "cost_curve")
MiB = 2**20


def snippets(n_held: int) -> tuple[str, list[str], list[str]]:
    """The cost curve's context (argparse.py) and its inputs: the first ``n_held`` as held-out snippets."""
    with open(os.path.join(DATA, "argparse.py"), encoding="utf-8") as f:
        context = f.read() + "\n\n"  # a file context is followed by the prompt's separator
    with open(os.path.join(DATA, "inputs.jsonl"), encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return context, texts[n_held:], texts[:n_held]


def teacher_targets(args, loaded, context: str, inputs: list[str]) -> dict:
    """Part 1: the teacher pass with the shared prefix's cache vs re-reading, same batch size."""
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    enc = PromptEncoder(loaded.tokenizer, Prompt("{text1}"), ())
    text = enc.text_of_first_tokens(context, args.teacher_length)
    reads = enc.read_after(text, inputs)
    firsts = [b - bool(enc.start_ids) for b in reads.starts]
    warm = ([reads.suffixes[0]], [firsts[0]])
    predicted_hidden(parts, reads.prefix[:64], *warm, pad, None)  # first calls allocate and pick kernels
    predicted_hidden(parts, reads.prefix[:64], *warm, pad, PrefixCache.encode(parts, reads.prefix[:64]))

    def cached():
        cache = PrefixCache.encode(parts, reads.prefix)
        return predicted_hidden(parts, reads.prefix, reads.suffixes, firsts, pad, cache, batch_size=args.batch_size)

    def whole():
        return predicted_hidden(parts, reads.prefix, reads.suffixes, firsts, pad, None, batch_size=args.batch_size)

    h_cached, t_cached = timed(cached, loaded.device)
    h_whole, t_whole = timed(whole, loaded.device)
    delta = max(float((distributions(parts, a, 1.0) - distributions(parts, b, 1.0)).abs().max())
                for a, b in zip(h_cached, h_whole))
    positions = sum(len(h) for h in h_cached)
    print(f"\n== 1. teacher targets: {len(inputs)} inputs read after {len(reads.context_ids)} context tokens "
          f"({positions} positions), batch {args.batch_size} on both paths")
    print(f"cached (shared prefix of {len(reads.prefix)} tokens encoded once, included): {t_cached:.1f} s; "
          f"re-read: {t_whole:.1f} s -> {t_whole / t_cached:.1f}x; max |delta log p| {delta:.1e}")
    return {"L": len(reads.context_ids), "speedup": t_whole / t_cached, "max_delta": delta}


def cost_curve(args) -> list[dict]:
    """Part 2: adaptbench's own cost-curve runs, one per length."""
    import adaptbench

    overrides = [f"model={args.model}", f"model.dtype={args.dtype}", f"model.device={args.device}",
                 f"cd.query_costs={args.queries}", f"train.max_steps={args.steps}", "runtime.progress=false",
                 f"grid={{cd.context_tokens: [{args.lengths}]}}", "name=bench-cd-long-context"]
    with tempfile.TemporaryDirectory() as out:
        records = adaptbench.run(CURVE, overrides, output_dir=out)
    print(f"\n== 2. the cost curve (adaptbench's cd.query_costs), LoRA student trained {args.steps} steps; "
          f"per query: median of {args.queries}, the paths taking turns; peak: one query, only the path's own "
          f"state resident")
    rows = []
    for rec in sorted(records, key=lambda r: r["method_info"].get("context_tokens", 0)):
        info = rec["method_info"]
        if rec["status"] != "ok":
            print(f"L ?: {rec['status']}: {rec.get('reason')}")
            continue
        paths, held = info["query_costs"], info.get("heldout") or {}
        reply = held.get("reply") or {}
        line = ", ".join(f"{n} {p['per_query_seconds']:.3f} s / {p['peak_memory_bytes'] / MiB:,.0f} MiB"
                         for n, p in paths.items())
        print(f"L {info['context_tokens']:,}: {line}; one-off icl_cached {paths['icl_cached']['setup_seconds']:.1f} s, "
              f"distilled {paths['distilled']['setup_seconds']:.1f} s")
        be = info["break_even"]
        print(f"   student: recovered {held.get('recovered', float('nan')):.0%} at the inputs, "
              f"{reply.get('recovered', float('nan')):.0%} on the teacher's replies (KL {held.get('kl_student', 0):.3f} "
              f"vs base {held.get('kl_base', 0):.3f}); break-even vs icl {_n(be['vs_icl'])}, vs icl_cached "
              f"{_n(be['vs_icl_cached'])} queries; measured together: {info['query_costs_interleaved']}")
        rows.append({"L": info["context_tokens"], "icl/distilled s": paths["icl"]["per_query_seconds"]
                     / paths["distilled"]["per_query_seconds"], "recovered": held.get("recovered")})
    return rows


def _n(n: float | None) -> str:
    return "never" if n is None else f"{n:,.1f}"


def compact_targets(args, loaded, context: str, held: list[str]) -> None:
    """Part 3: bytes and KL error of the stored targets on held-out snippets."""
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    enc = PromptEncoder(loaded.tokenizer, Prompt("{text1}"), ())
    reads = enc.read_after(enc.text_of_first_tokens(context, args.teacher_length), held)
    first = bool(enc.start_ids)
    t_hidden = predicted_hidden(parts, reads.prefix, reads.suffixes, [b - first for b in reads.starts], pad,
                                PrefixCache.encode(parts, reads.prefix), batch_size=args.batch_size)
    teacher_lp = torch.cat([distributions(parts, h, 1.0) for h in t_hidden])
    with torch.inference_mode():
        student = torch.cat([vocab_logits(parts, sequence_hidden(parts, [enc.start_ids + reads.own(i)], pad)[0][
            len(enc.start_ids) - first:]).cpu() for i in range(len(held))])
    halfway = (student + teacher_lp) / 2  # log-probs differ from logits by a per-row constant only
    full_b = full_bytes_per_position(teacher_lp.shape[1])
    targets = compress_topk(teacher_lp, args.top_k)
    rebuilt = torch.cat([distributions(parts, h.half().float(), 1.0) for h in t_hidden])
    print(f"\n== 3. compact targets on {len(held)} held-out snippets ({teacher_lp.shape[0]} positions), teacher = "
          f"the model with {len(reads.context_ids)} context tokens")
    for name, logits in (("untrained student", student), ("halfway student", halfway)):
        full = full_kl(teacher_lp, logits)
        lq = torch.log_softmax(logits.float(), dim=-1)
        hidden_err = float(((rebuilt.exp() * (rebuilt - lq)).sum(-1) - full).abs().mean())
        print(f"{name:18s}: full KL {float(full.mean()):.3f}; |KL error| store hidden {hidden_err:.1e}, "
              f"top-{targets.k} {topk_error(teacher_lp, logits, args.top_k):.4f} nats/position")
    hidden_b = 2 * t_hidden[0].shape[-1]
    print(f"bytes/position: hidden {hidden_b:,} ({hidden_b / full_b:.2%} of {full_b:,}), top-{targets.k} "
          f"{targets.bytes_per_position:,} ({targets.bytes_per_position / full_b:.2%}); top-k rest mass "
          f"{float(targets.rest.exp().mean()):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--teacher-length", type=int, default=4096, help="context tokens of parts 1 and 3")
    ap.add_argument("--lengths", default="2048,8000", help="context lengths of the cost curve (part 2)")
    ap.add_argument("--inputs", type=int, default=16, help="distillation inputs of part 1")
    ap.add_argument("--held-out", type=int, default=8, help="held-out snippets of part 3")
    ap.add_argument("--queries", type=int, default=4, help="timed queries per path (part 2)")
    ap.add_argument("--steps", type=int, default=16, help="the student's training steps (part 2)")
    ap.add_argument("--batch-size", type=int, default=4, help="inputs per forward on both teacher paths (part 1)")
    ap.add_argument("--top-k", type=int, default=DEFAULT_TOP_K)
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    wall = time.perf_counter()
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    context, inputs, held = snippets(args.held_out)
    print(f"model {args.model} ({loaded.dtype}, {loaded.device}, window {loaded.window}); torch threads "
          f"{torch.get_num_threads()}; context configs/data/cost_curve/argparse.py")
    parts = set(args.parts.split(","))
    if "1" in parts:
        teacher_targets(args, loaded, context, inputs[:args.inputs])
    if "3" in parts:
        compact_targets(args, loaded, context, held)
    if "2" in parts:
        del loaded
        cost_curve(args)
    print(f"\nwall time {time.perf_counter() - wall:.0f} s")


if __name__ == "__main__":
    main()
