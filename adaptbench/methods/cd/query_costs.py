"""The cost curve of a distilled context (issue 11): what answering one query costs, three ways, measured.

- ``icl``: the teacher re-reads context + query for every query (one forward over L + |q| tokens);
  no one-off cost;
- ``icl_cached``: the context's KV cache is encoded once -- its seconds are this path's one-off cost --
  then only the query's tokens run, attending over the L cached positions;
- ``distilled``: the trained student reads the query alone; its one-off cost is distillation itself
  (:data:`DISTILL_PHASES` of the run's costs: the teacher pass, the student's set-up and training).

"One query" is what scoring it needs: one forward pass at batch size 1 that yields the next-token
distribution (log-softmax over the vocabulary) after every query token, timed with
``time.perf_counter`` (CUDA synchronised on both sides).  Each path is a cost interval of its own
(``query:icl``, ``query:icl_cached``, ``query:distilled``, see :meth:`CostTracker.interval`): its
seconds are left out of the phase it runs in, and its peak memory is the process' peak while it
answers -- model weights included, so the three are comparable.

Each path needs its own model state, hence the order: the ICL paths need the teacher with the context
(the student's model before training, unless ``cd.teacher`` names another), so they run in the teacher
phase while it is loaded -- ``icl`` before the teacher's cache exists, so that its peak holds no cache;
the student runs after training.  The context-length axis L is ``cd.context_tokens`` (:func:`cut_context`).
"""

from __future__ import annotations

from statistics import mean
from typing import Callable, Sequence

import torch

from ...costs import timed
from ...breakeven import DISTILLED, ICL, ICL_CACHED, ICL_PATHS, PathCost, break_even
from ...contexts import ContextSource, cut_to_tokens
from ...errors import ConfigError, RunSkipped
from ...scoring import LMParts, PrefixCache, sequence_hidden, vocab_logits
from .sequence import CHUNK

DISTILL_PHASES = ("load_teacher", "teacher", "setup", "train")  # what distilling costs once


def cut_context(ids: list[int], length: int | None, source: ContextSource) -> list[int]:
    """The context's first ``cd.context_tokens`` tokens: one point of the cost curve's L axis.

    A context shorter than L skips the run (that point of the curve does not exist for this text);
    demonstrations are not cut mid-example -- their length axis is ``shots``."""
    if length is None:
        return ids
    if source.kind == "demonstrations":
        raise ConfigError("cd.context_tokens cuts a file or chat context; with cd.context: demonstrations the "
                          "context's length is set by shots")
    if length > len(ids):
        raise RunSkipped(f"cd.context_tokens: {length} tokens asked for, but the context {source.path} has only "
                         f"{len(ids)} tokens")
    return cut_to_tokens(ids, length)


def answer(parts: LMParts, ids: Sequence[int], n: int, pad_id: int, cache: PrefixCache | None = None) -> None:
    """One query as scoring needs it: a forward pass over ``ids`` (after ``cache``'s prefix, if any) and the
    next-token log-distributions after its last ``n`` tokens (computed a block at a time, then dropped)."""
    with torch.inference_mode():
        hidden = sequence_hidden(parts, [list(ids)], pad_id, cache)[0][-n:]
        for start in range(0, len(hidden), CHUNK):
            torch.log_softmax(vocab_logits(parts, hidden[start:start + CHUNK]), dim=-1)


class QueryCosts:
    """The three paths of one run: measured one after the other, written to ``method_info`` at the end
    (``query_costs: {path: {per_query_seconds, peak_memory_bytes, setup_seconds, n, seconds}}`` and
    ``break_even: {vs_icl, vs_icl_cached}``: query counts, null where distilling never pays)."""

    def __init__(self, ctx, n: int, pad_id: int):
        self.ctx, self.n, self.pad = ctx, n, pad_id
        self.queries: list[list[int]] = []
        self.paths: dict[str, dict] = {}
        self.notes: list[str] = []

    def choose(self, held: list[list[int]], distilled: list[list[int]], room: int) -> None:
        """The first n held-out queries that fit beside the context (distilled ones if none is held out)."""
        for kind, pool in (("held_out", held), ("distilled", distilled)):
            fits = [x for x in pool if x and len(x) <= room]
            if fits:
                self.queries, self.kind = fits[:self.n], kind
                return
        self.notes.append(f"no input fits beside the context ({room} tokens left in the window): nothing timed")

    def icl(self, parts: LMParts, context: list[int]) -> None:
        self._measure(ICL, parts, lambda x: answer(parts, context + x, len(x), self.pad), 0.0, len(context))

    def icl_cached(self, parts: LMParts, cache: PrefixCache | None, setup_seconds: float, why_not: str | None):
        if cache is None:
            self.notes.append(f"icl_cached not measured: {why_not}")
            return
        self._measure(ICL_CACHED, parts, lambda x: answer(parts, x, len(x), self.pad, cache), setup_seconds, 0)

    def distilled(self, parts: LMParts, start_ids: list[int]) -> None:
        setup = sum(p.seconds for p in self.ctx.costs.phases if p.name in DISTILL_PHASES)
        self._measure(DISTILLED, parts, lambda x: answer(parts, start_ids + x, len(x), self.pad), setup,
                      len(start_ids))

    def _measure(self, name: str, parts: LMParts, run: Callable, setup: float, extra_tokens: int) -> None:
        """Time every query on one path; a short untimed forward first warms the model's kernels up."""
        if not self.queries:
            return
        with self.ctx.costs.interval(f"query:{name}") as phase:
            answer(parts, self.queries[0], 1, self.pad)
            seconds = [timed(lambda: run(x), parts.device)[1] for x in self.queries]
            phase.tokens = sum(len(x) + extra_tokens for x in self.queries)
        self.paths[name] = {"per_query_seconds": mean(seconds), "peak_memory_bytes": phase.peak_memory_bytes,
                            "setup_seconds": setup, "n": len(seconds), "seconds": seconds}

    def finish(self) -> None:
        """Record the paths and the break-even query counts of the student against each ICL path."""
        info = self.ctx.info
        info["query_costs"] = self.paths
        if self.queries:
            info["query_costs_inputs"] = self.kind
        if self.notes:
            info["query_costs_notes"] = self.notes
        costs = {name: PathCost(name, p["setup_seconds"], p["per_query_seconds"], p["peak_memory_bytes"])
                 for name, p in self.paths.items()}
        if DISTILLED in costs:
            info["break_even"] = {f"vs_{base}": break_even(costs[base], costs[DISTILLED]) if base in costs else None
                                  for base in ICL_PATHS}
