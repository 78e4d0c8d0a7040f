"""After how many queries is distilling a context cheaper than prompting with it?

Three ways to answer n queries that all need the same context of L tokens:

- ``icl``: in-context learning re-encoding the context with every query (no setup; each query
  costs L + |query| tokens);
- ``icl_cached``: in-context learning with the context's KV cache (setup: encoding the context once;
  each query then costs |query| tokens, attending over the L cached positions);
- ``distilled``: a student trained by context distillation (setup: the teacher's pass plus the
  student's training; each query costs |query| tokens on a model with no context at all).

Each is a :class:`PathCost` -- a line ``setup + n * per_query`` -- made of *measured* numbers; this
module only does the arithmetic (no timing here), so it is exact and testable by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

ICL = "icl"
ICL_CACHED = "icl_cached"
DISTILLED = "distilled"
ICL_PATHS = (ICL, ICL_CACHED)
QUERIES, TOLERANCE = 1000, 0.05  # the defaults a recommendation among ways to use a context is made for


@dataclass(frozen=True)
class PathCost:
    """One way to answer queries: one-off setup seconds, seconds per query, and its peak memory in bytes."""

    name: str
    setup_seconds: float
    per_query_seconds: float
    peak_memory_bytes: int

    def __post_init__(self):
        for field_name in ("setup_seconds", "per_query_seconds", "peak_memory_bytes"):
            value = getattr(self, field_name)
            if not value >= 0:  # also catches NaN
                raise ValueError(f"{self.name}: {field_name} must be a measured non-negative number, got {value!r}")


def cumulative_seconds(cost: PathCost, n_queries: float) -> float:
    """Total seconds to set up and answer ``n_queries`` queries (works on numpy arrays of n too)."""
    return cost.setup_seconds + n_queries * cost.per_query_seconds


def break_even(a: PathCost, b: PathCost) -> float | None:
    """The query count n* from which on path ``b`` costs no more in total than path ``a``, for every n >= n*.

    ``b`` is the path with more setup and cheaper queries.  n* = (setup_b - setup_a) / (per_query_a -
    per_query_b), real-valued (the first whole count is ``ceil(n*)``); 0 when ``b`` is no dearer from
    the start; None when ``b`` is dearer per query, since then ``a`` always wins in the end."""
    if b.per_query_seconds > a.per_query_seconds:
        return None
    if b.setup_seconds <= a.setup_seconds:
        return 0.0
    if b.per_query_seconds == a.per_query_seconds:
        return None  # same slope, more setup: b never catches up
    return (b.setup_seconds - a.setup_seconds) / (a.per_query_seconds - b.per_query_seconds)


def _break_even_cell(cost: PathCost, baseline: PathCost | None) -> float:
    """A table cell: n*, ``inf`` for never, NaN where it does not apply (no baseline, or the path itself)."""
    if baseline is None or baseline is cost:
        return math.nan
    n = break_even(baseline, cost)
    return math.inf if n is None else n


def cost_curve_table(rows: Sequence[tuple[int, Mapping[str, PathCost]]], baselines: Sequence[str] = ICL_PATHS):
    """One row per (context length L, path): setup and per-query seconds, peak memory, and the break-even
    query count against each ICL path (columns ``break_even_vs_<path>``: ``inf`` = never, NaN = n/a)."""
    import pandas as pd

    records = []
    for length, paths in rows:
        for name, cost in paths.items():
            if name != cost.name:
                raise ValueError(f"context length {length}: path key {name!r} holds the cost of {cost.name!r}")
            record = {"context_tokens": length, "path": name, "setup_seconds": cost.setup_seconds,
                      "per_query_seconds": cost.per_query_seconds, "peak_memory_bytes": cost.peak_memory_bytes}
            for base in baselines:
                record[f"break_even_vs_{base}"] = _break_even_cell(cost, paths.get(base))
            records.append(record)
    columns = ["context_tokens", "path", "setup_seconds", "per_query_seconds", "peak_memory_bytes",
               *(f"break_even_vs_{base}" for base in baselines)]
    return pd.DataFrame.from_records(records, columns=columns)
