"""The decision's two figures per model, context and length: quality against per-query seconds with the
Pareto front marked, and cumulative seconds against the number of queries (one-off + n x per query)."""

from __future__ import annotations

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..measure.breakeven import break_even  # noqa: E402
from .decision import Decision, pareto  # noqa: E402
from .plots import _finish, _slug  # noqa: E402


def _colors(names) -> dict[str, tuple]:
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(sorted(names))}


def quality_vs_cost(d: Decision, out_dir: str) -> tuple[str, list[str]] | None:
    judged = [o for o in d.options.values() if o.quality is not None]
    if not judged:
        return None
    colors = _colors(d.options)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for o in judged:
        err = None if o.low is None else [[o.quality - o.low], [o.high - o.quality]]
        ax.errorbar([o.cost.per_query_seconds], [o.quality], yerr=err, fmt="o", color=colors[o.name], label=o.name,
                    capsize=3)
    front = pareto(judged)
    ax.plot([o.cost.per_query_seconds for o in front], [o.quality for o in front], "--", color="gray",
            label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # log-scale minor labels overlap
    ax.set(xlabel="seconds per query (median, batch size 1)", ylabel=d.metric)
    ax.grid(alpha=0.3)
    caption = (f"{d.model}, context {d.context}, L = {d.length}: each option's quality on the held-out queries "
               f"(95 % interval) against what a query costs; the dashed line joins the options no other beats on both.")
    return _finish(fig, ax, f"{d.model}: quality vs per-query cost (L={d.length})", caption, out_dir,
                   _slug("decision_quality", d.model, d.context, d.length))


def cumulative(d: Decision, out_dir: str) -> tuple[str, list[str]]:
    opts = list(d.options.values())
    crossings = [break_even(a.cost, b.cost) for a in opts for b in opts if a is not b]
    finite = [n for n in crossings if n is not None and n > 0]
    n = np.linspace(0, max(100.0, 2 * max(finite)) if finite else 100.0, 200)
    colors = _colors(d.options)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for o in opts:
        ax.plot(n, o.total(n), color=colors[o.name], label=o.name)
    ax.set(xlabel="queries answered", ylabel="cumulative seconds (one-off + queries)")
    ax.grid(alpha=0.3)
    caption = (f"{d.model}, context {d.context}, L = {d.length}: total seconds to set up each option and answer n "
               "queries; where two lines cross, the one with more one-off cost starts to pay.")
    return _finish(fig, ax, f"{d.model}: cumulative cost (L={d.length})", caption, out_dir,
                   _slug("decision_cumulative", d.model, d.context, d.length))


def figures(found: list[Decision], out_dir: str) -> list[tuple[str, list[str]]]:
    out = []
    for d in found:
        out += [f for f in (quality_vs_cost(d, out_dir), cumulative(d, out_dir)) if f is not None]
    return out
