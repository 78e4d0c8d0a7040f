"""The machine's matmul roofline in float32 and bfloat16, and how close adaptbench's hot paths come to it.

    python bench/roofline.py                      # SmolLM2-135M on this machine's threads
    python bench/roofline.py --context 1500 --queries 96 --repeats 3

One process, every number measured in it:

1. **Roofline**: every distinct shape of the model's linear layers (LM head included) multiplied by a
   ``--rows`` x in activation, in float32 and bfloat16; the model's roofline in each dtype is the layers'
   FLOPs (as often as each shape occurs) over their summed seconds: what its matmuls can reach here.
2. **Hot paths**, each in float32 and in bfloat16 as ``dtype: auto`` would run it (bfloat16 weights for
   scoring; bf16 autocast over float32 master weights for training and for a teacher that is the student's
   model): ICL scoring after a shared ``--context``-token prefix of RTE demonstrations (HANS queries, encoded
   once), the CD teacher pass over inputs read after that context, a training step (PBFT: full and LoRA, AdamW),
   and a LoRA student answering one query alone.  FLOPs are counted by ``torch.utils.flop_counter`` on the
   real calls (CPU flash attention included), seconds are the fastest of ``--repeats``, the dtypes take
   turns.  Printed: seconds, achieved GFLOP/s, share of that dtype's roofline, bf16/fp32 speed-up.

Matmuls are not all of a pass: attention's softmax (an exp per query x key, in float32), norms and the
optimizer are not in the roofline, which is why a path's share can sit well under 100 %.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections import Counter
from contextlib import nullcontext

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from adaptbench._util.cpu import bf16_instructions
from adaptbench.config.schema import PromptSpec
from adaptbench.data import eval_examples, get_eval_set, get_task, resolve_data_dir, train_pool
from adaptbench.data.sampling import largest_fitting_sample
from adaptbench.methods.cd.query_costs import answer
from adaptbench.methods.cd.sequence import predicted_hidden
from adaptbench.methods.pbft import VerbalizerModel
from adaptbench.models.interface import lm_parts
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.scoring.core import PrefixCache, pad_right, score
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.training.policies import LoraSettings, apply_policy

aten = torch.ops.aten
# torch's counter knows the CUDA attention kernels; the CPU flash kernel has the same FLOPs
CPU_ATTENTION = {
    aten._scaled_dot_product_flash_attention_for_cpu:
        lambda q, k, v, *a, out_shape=None, **kw: sdpa_flop_count(q, k, v),
    aten._scaled_dot_product_flash_attention_for_cpu_backward:
        lambda g, q, k, v, *a, out_shape=None, **kw: sdpa_backward_flop_count(g, q, k, v),
}


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up: kernels picked, buffers allocated
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def flops_of(fn) -> int:
    with FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as counter:
        fn()
    return counter.get_total_flops()


def roofline(model: torch.nn.Module, rows: int, repeats: int) -> dict[torch.dtype, float]:
    """GFLOP/s of the model's linear layers, every shape as often as the model has it, per dtype."""
    shapes = Counter(tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear))
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        flops = seconds = 0.0
        for (n_out, n_in), count in shapes.items():
            x, w = torch.randn(rows, n_in, dtype=dtype), torch.randn(n_out, n_in, dtype=dtype)
            t = best_seconds(lambda: torch.nn.functional.linear(x, w), repeats)
            flops, seconds = flops + count * 2 * rows * n_in * n_out, seconds + count * t
        out[dtype] = flops / seconds / 1e9
    print(f"roofline ({len(shapes)} linear shapes x {rows} rows): float32 {out[torch.float32]:,.0f} GFLOP/s, "
          f"bfloat16 {out[torch.bfloat16]:,.0f} GFLOP/s ({out[torch.bfloat16] / out[torch.float32]:.2f}x)")
    return out


def paths(args, models: dict, enc, context_sample, hans, pool) -> dict[str, dict]:
    """Each hot path as a function per dtype, () -> None, run as ``dtype: auto`` runs it: ``models`` maps a
    dtype to the model that scores in it; training, the teacher and the student use float32 master weights
    under that dtype's autocast."""
    master = models[torch.float32]
    trainees = {policy: VerbalizerModel(copy.deepcopy(master.model), enc.label_token_ids)
                for policy in ("full", "lora")}
    for policy, model in trainees.items():
        apply_policy(model, policy, lora=LoraSettings())
    context, queries = enc.icl_inputs(context_sample, hans)
    texts = [enc.prompt.query(ex) for ex in pool[:args.inputs]]
    reads = enc.read_after(enc.context_text(context_sample), texts)
    firsts = [b - bool(enc.start_ids) for b in reads.starts]
    batch = [enc.query_ids(ex) for ex in pool[:args.batch]]
    pad = master.tokenizer.pad_token_id
    out: dict[str, dict] = {}
    for dtype, scoring in models.items():
        auto = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == torch.bfloat16 else nullcontext
        parts, mparts = lm_parts(scoring.model), lm_parts(master.model)
        cache = PrefixCache.encode(parts, context, shared=True)
        out.setdefault("ICL scoring (shared prefix)", {})[dtype] = lambda p=parts, c=cache: \
            score(p, queries, enc.label_token_ids, pad, prefix_cache=c, batch_size=32)

        def teacher(a=auto):  # the student's own float32 weights under the run's autocast, the context cached
            with a():
                predicted_hidden(mparts, reads.prefix, reads.suffixes, firsts, pad,
                                 PrefixCache.encode(mparts, reads.prefix), batch_size=8)
        out.setdefault("CD teacher pass (context cached)", {})[dtype] = teacher
        for policy, model in trainees.items():
            out.setdefault(f"training step ({policy}, batch {args.batch})", {})[dtype] = \
                train_step(model, batch, pad, auto)
        out.setdefault("LoRA student, 8 queries alone", {})[dtype] = \
            student_queries(lm_parts(trainees["lora"].lm), enc.start_ids, queries[:8], pad, auto)
    return out


def train_step(model: VerbalizerModel, batch: list, pad: int, auto):
    """One PBFT optimizer step (verbalizer cross-entropy, AdamW) on float32 master weights."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    ids, mask = pad_right(batch, pad)
    labels = torch.arange(len(batch)) % 2

    def step():
        with auto():
            loss = torch.nn.functional.cross_entropy(model(ids, mask).float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def student_queries(parts, start: list[int], queries: list, pad: int, auto):
    """A LoRA student (adapters unmerged) answering queries one at a time, no context: its per-query cost."""
    def answer_all():
        with auto():
            for q in queries:
                answer(parts, start + list(q), 1, pad)
    return answer_all


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--context", type=int, default=1500, help="tokens of RTE demonstrations before each query")
    ap.add_argument("--queries", type=int, default=96, help="HANS queries scored")
    ap.add_argument("--inputs", type=int, default=32, help="inputs of the CD teacher pass")
    ap.add_argument("--batch", type=int, default=8, help="examples per training step")
    ap.add_argument("--rows", type=int, default=2048, help="activation rows of the roofline's matmuls")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats; the fastest counts")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    task = get_task("rte")
    data_dir = resolve_data_dir(args.data_dir)
    pool = train_pool(task, data_dir)
    hans, _ = eval_examples(get_eval_set("hans", task), data_dir, max_examples=args.queries, seed=0)
    master = load_model(args.model, dtype="float32", device="cpu")
    models = {torch.float32: master, torch.bfloat16: load_model(args.model, dtype="bfloat16", device="cpu")}
    print(f"model {args.model}, CPU bfloat16 instructions: {', '.join(bf16_instructions()) or 'none'}, "
          f"torch threads {torch.get_num_threads()}")
    roof = roofline(master.model, args.rows, args.repeats)

    enc = PromptEncoder(master.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    sample = largest_fitting_sample(pool, 0, 2, lambda s: len(enc.encode(enc.context_text(s))) <= args.context)
    if not sample:
        raise SystemExit(f"not even 2 demonstrations fit --context {args.context} tokens")
    print(f"context: {len(sample)} RTE demonstrations, {len(enc.encode(enc.context_text(sample)))} tokens; "
          f"{len(hans)} HANS queries\n")
    print(f"{'path':36s} {'fp32 s':>8s} {'GFLOP/s':>8s} {'roof':>5s} {'bf16 s':>8s} {'GFLOP/s':>8s} {'roof':>5s} "
          f"{'bf16/fp32':>9s}")
    for name, by_dtype in paths(args, models, enc, sample, hans, pool).items():
        flops = {d: flops_of(fn) for d, fn in by_dtype.items()}
        seconds = {d: float("inf") for d in by_dtype}
        for _ in range(args.repeats):  # the dtypes take turns, so a slow spell of the machine hits both
            for d, fn in by_dtype.items():
                seconds[d] = min(seconds[d], best_seconds(fn, 1))
        cells = []
        for d in (torch.float32, torch.bfloat16):
            rate = flops[d] / seconds[d] / 1e9
            cells.append(f"{seconds[d]:8.3f} {rate:8.0f} {rate / roof[d]:5.0%}")
        print(f"{name:36s} {cells[0]} {cells[1]} {seconds[torch.float32] / seconds[torch.bfloat16]:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
