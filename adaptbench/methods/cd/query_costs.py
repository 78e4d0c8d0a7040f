"""The cost curve of a distilled context (issue 11): what answering one query costs, three ways, measured alike.

- ``icl``: the teacher re-reads context + query for every query (the text as one string, as a user's
  prompt is read); no one-off cost;
- ``icl_cached``: the context's shared prefix is encoded once -- its seconds are this path's one-off
  cost -- then only the rest of each reading runs, attending over the cached positions;
- ``distilled``: the trained student reads the query alone; its one-off cost is distillation itself
  (:data:`DISTILL_PHASES` of the run's costs: self-study requests, the teacher pass, the student's set-up and
  training).

"One query" is what scoring it needs: one forward pass at batch size 1 that yields the next-token
distribution (log-softmax over the vocabulary) after every query token.  How the paths are measured, so
that they compare:

- **Memory**: after an untimed warm-up query on each path (with the context: kernels and thread pools
  start there, not in a measured query), one query per path (the longest of the timed ones), with nothing
  resident but the model and that path's own state (the KV cache for ``icl_cached``): paths without a
  state are measured first, before any cache exists.  Each is a cost interval of its own
  (``query:<path>``): the process' peak while it answers, model weights included; ``resident_bytes`` is
  what was resident just before (before the path's state was built).  Building a cache is timed apart
  (``setup:icl_cached``).
- **Time**: every timed query on every path, the paths taking turns query by query (the order rotates),
  so a change in the machine's load hits them alike.  Per-query seconds are the median; every query's
  seconds are recorded.  The timing loop is one interval (``query_timing``), left out of the phase it
  runs in.

Where the student is a LoRA adapter on the teacher's own model, all three paths are measured together
after training (the teacher is the model with its adapters off), so the same things are resident for all
three.  Otherwise (full or BitFit students, a teacher of its own) the ICL paths are measured in the teacher
phase, before the teacher's targets exist, and the student after training (``query_costs_interleaved``
says which paths took turns): what the run did in between (the teacher pass, training) leaves the
process' resident memory higher for the student -- compare the paths' rise above ``resident_bytes``
there, not their peaks.  The context-length axis L is
``cd.context_tokens`` (:func:`cut_context`).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from statistics import mean, median
from typing import Any, Callable, ContextManager

import torch

from ...measure.breakeven import DISTILLED, ICL_PATHS, PathCost, break_even
from ...data.contexts import ContextSource
from ...measure.costs import resident_bytes, timed
from ...errors import ConfigError, RunSkipped
from ...models.parts import LMParts, vocab_logits
from ...scoring.core import PrefixCache, sequence_hidden
from .sequence import CHUNK

DISTILL_PHASES = ("load_teacher", "self_study", "teacher", "setup", "train")  # what distilling costs once


def cut_context(encoder, text: str, length: int | None, source: ContextSource) -> str:
    """The text of the context's first ``cd.context_tokens`` tokens (start tokens count): one point of the
    cost curve's L axis, read after as one string like the whole context.

    A context shorter than L skips the run (that point of the curve does not exist for this text);
    demonstrations are not cut mid-example -- their length axis is ``shots``."""
    if length is None or source.kind == "niah":  # a haystack is built at its length, needles included
        return text
    if source.kind == "demonstrations":
        raise ConfigError("cd.context_tokens cuts a file or chat context; with cd.context: demonstrations the "
                          "context's length is set by shots")
    have = len(encoder.encode(text))
    if length > have:
        raise RunSkipped(f"cd.context_tokens: {length} tokens asked for, but the context {source.path} has only "
                         f"{have} tokens")
    return encoder.text_of_first_tokens(text, length)


@dataclass(frozen=True)
class Query:
    """A timed query: what the teacher reads after the shared prefix, and the query's own tokens."""

    suffix: list[int]
    own: list[int]
    n: int  # positions scoring needs: every own token and the one after it (len(own) + a start token)
    text: str = ""  # the query as written (what an arm retrieves with)


def answer(parts: LMParts, ids, n: int, pad_id: int, cache: PrefixCache | None = None) -> None:
    """One query as scoring needs it: a forward pass over ``ids`` (after ``cache``'s prefix, if any) and the
    next-token log-distributions after its last ``n`` tokens (computed a block at a time, then dropped)."""
    answer_batch(parts, [ids], [n], pad_id, cache)


def answer_batch(parts: LMParts, seqs: list, ns: list[int], pad_id: int, cache: PrefixCache | None = None) -> None:
    """Queries answered together, one forward over the right-padded batch (see :func:`answer`)."""
    with torch.inference_mode():
        for hidden, n in zip(sequence_hidden(parts, [list(x) for x in seqs], pad_id, cache), ns):
            hidden = hidden[-n:]
            for start in range(0, len(hidden), CHUNK):
                torch.log_softmax(vocab_logits(parts, hidden[start:start + CHUNK]), dim=-1)


@dataclass
class QueryPath:
    """One way to answer a query.  ``answer(query, state)``; ``setup()`` builds the state the path keeps
    resident (the context's KV cache) -- timed, its one-off cost -- or ``setup_seconds`` is a one-off cost
    measured elsewhere (distillation); ``view()``: the model as this path needs it (a LoRA student's
    adapters off, for the teacher); ``tokens``: tokens a query reads besides its own (the context)."""

    name: str
    answer: Callable[[Query, Any], None]
    setup: Callable[[], Any] | None = None
    setup_seconds: float = 0.0
    view: Callable[[], ContextManager] = nullcontext
    tokens: Callable[[Query], int] = field(default=lambda q: len(q.own))


class QueryCosts:
    """The paths of one run, written to ``method_info`` at the end (``query_costs: {path:
    {per_query_seconds, mean_seconds, peak_memory_bytes, setup_seconds, n, seconds, tokens_per_query}}`` and
    ``break_even: {vs_icl, vs_icl_cached}``: query counts, null where distilling never pays)."""

    def __init__(self, ctx, n: int):
        self.ctx, self.n = ctx, n
        self.queries: list[Query] = []
        self.kind = ""
        self.paths: dict[str, dict] = {}
        self.groups: list[list[str]] = []
        self.notes: list[str] = []

    def choose(self, held: list[Query], distilled: list[Query]) -> None:
        """The first n held-out queries that fit beside the context (distilled ones if none is held out)."""
        for kind, pool in (("held_out", held), ("distilled", distilled)):
            if pool:
                self.queries, self.kind = pool[:self.n], kind
                return
        self.notes.append("no input fits beside the context in the window: nothing timed")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def measure(self, paths: list[QueryPath]) -> dict[str, Any]:
        """Measure the paths together (memory one by one, time in turns); returns their states by name."""
        if not self.queries or not paths:
            return {}
        costs, longest = self.ctx.costs, max(self.queries, key=lambda q: len(q.suffix))
        states, memory, resident, setups = {}, {}, {}, {}
        stateless_first = sorted(paths, key=lambda p: p.setup is not None)  # before any cache exists
        for path in stateless_first:  # warm-up (untimed, unmeasured): kernels and thread pools start here
            if path.setup is None:
                with path.view():
                    path.answer(longest, None)
        for path in stateless_first:
            resident[path.name] = resident_bytes(self._device)
            with path.view():
                if path.setup is not None:
                    with costs.interval(f"setup:{path.name}"):
                        states[path.name], setups[path.name] = timed(path.setup, self._device)
                    path.answer(longest, states[path.name])  # its warm-up, with the cache
                with costs.interval(f"query:{path.name}") as phase:
                    path.answer(longest, states.get(path.name))
                    phase.tokens = path.tokens(longest)
            memory[path.name] = phase.peak_memory_bytes
        seconds: dict[str, list[float]] = {p.name: [] for p in paths}
        with costs.interval("query_timing"):
            for j, query in enumerate(self.queries):
                for path in paths[j % len(paths):] + paths[:j % len(paths)]:
                    with path.view():
                        seconds[path.name].append(timed(lambda: path.answer(query, states.get(path.name)),
                                                        self._device)[1])
        for path in paths:
            s = seconds[path.name]
            self.paths[path.name] = {
                "per_query_seconds": median(s), "mean_seconds": mean(s), "seconds": s, "n": len(s),
                "peak_memory_bytes": memory[path.name], "resident_bytes": resident[path.name],
                "setup_seconds": setups.get(path.name, path.setup_seconds),
                "tokens_per_query": mean(path.tokens(q) for q in self.queries),
                "state_bytes": getattr(states.get(path.name), "nbytes", None),
                "peak_memory_query_tokens": path.tokens(longest)}
        self.groups.append([p.name for p in paths])
        return states

    @property
    def _device(self) -> torch.device:
        return self.ctx.loaded.device

    def finish(self) -> None:
        """Record the paths and the break-even query counts of the student against each ICL path."""
        info = self.ctx.info
        info["query_costs"] = self.paths
        if self.queries:
            info["query_costs_inputs"] = self.kind
            info["query_costs_queries"] = [q.text for q in self.queries]  # every path answered these, in order
            info["query_costs_interleaved"] = self.groups
        if self.notes:
            info["query_costs_notes"] = self.notes
        costs = {name: PathCost(name, p["setup_seconds"], p["per_query_seconds"], p["peak_memory_bytes"])
                 for name, p in self.paths.items()}
        if DISTILLED in costs:
            info["break_even"] = {f"vs_{base}": break_even(costs[base], costs[DISTILLED]) if base in costs else None
                                  for base in ICL_PATHS}
