"""The report's figures (matplotlib, PNG and SVG): the questions a reader of the reference study asks.

- in-domain vs out-of-domain accuracy per method: one point per seed, group means marked, the diagonal
- accuracy vs number of shots, with the spread over seeds as a band
- accuracy vs cost (wall time, peak memory)
- fine-tuning learning curves
- the cost curve of a distilled context: per-query cost vs context length, cumulative cost vs queries
"""

from __future__ import annotations

import os
import re
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.ticker  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .aggregate import CostCurve, eval_set_order  # noqa: E402
from ..measure.breakeven import DISTILLED, ICL, ICL_CACHED, ICL_PATHS, break_even, cumulative_seconds  # noqa: E402

MARKERS = "osD^v<>P*X"


def label(method: str, trainable) -> str:
    return f"{method} ({trainable})" if isinstance(trainable, str) and trainable else method


def _labels(df: pd.DataFrame) -> pd.Series:
    return pd.Series([label(m, t) for m, t in zip(df["method"], df["trainable"])], index=df.index)


ORDER = ["icl", "pbft", "vanilla", "cd"], ["", "full", "head", "bitfit", "lora"]


def _rank(name: str) -> tuple:
    method, _, rest = name.partition(" (")
    trainable = rest.rstrip(")")
    methods, policies = ORDER
    return (methods.index(method) if method in methods else len(methods), method,
            policies.index(trainable) if trainable in policies else len(policies), trainable)


def _colors(labels) -> dict[str, tuple]:
    """One colour per method label, in a fixed order, so figures of one report agree."""
    cmap = plt.get_cmap("tab10")
    return {name: cmap(i % 10) for i, name in enumerate(sorted(set(labels), key=_rank))}


def _slug(*parts) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _save(fig, out_dir: str, name: str) -> list[str]:
    paths = []
    for ext in ("png", "svg"):
        path = os.path.join(out_dir, f"{name}.{ext}")
        fig.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _finish(fig, legend_ax, title: str, caption: str, out_dir: str, name: str) -> tuple[str, list[str]]:
    """Legend to the right of ``legend_ax``, a title, saved as PNG and SVG: (caption, paths)."""
    legend_ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    return caption, _save(fig, out_dir, name)


def _overall(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["slice"] == "all")].copy()
    ok["label"] = _labels(ok)
    return ok


def in_vs_out(df: pd.DataFrame, out_dir: str) -> list[tuple[str, list[str]]]:
    """Per model x task x OOD set: in-domain (x) vs OOD (y) accuracy of every run, means marked."""
    ok = _overall(df)
    figures = []
    for (model, task), part in ok.groupby(["model", "task"], sort=False):
        in_domain = part[part["in_domain"] == True]  # noqa: E712 (pandas)
        if in_domain.empty:
            continue
        x_by_run = in_domain.set_index("run_id")["accuracy"]
        colors = _colors(part["label"])
        shots = sorted(part["shots"].unique())
        for ood in [s for s in eval_set_order(part) if s not in set(in_domain["eval_set"])]:
            rows = part[part["eval_set"] == ood].copy()
            rows["x"] = rows["run_id"].map(x_by_run)
            rows = rows.dropna(subset=["x"])
            if rows.empty:
                continue
            fig, ax = plt.subplots(figsize=(6.2, 5))
            for (name, k), g in rows.groupby(["label", "shots"], sort=False):
                marker = MARKERS[shots.index(k) % len(MARKERS)]
                ax.scatter(g["x"], g["accuracy"], color=colors[name], marker=marker, alpha=0.45, s=28)
                ax.scatter(g["x"].mean(), g["accuracy"].mean(), color=colors[name], marker=marker, s=140,
                           edgecolor="black", linewidth=1.2,
                           label=f"{name}, k={k}" if len(shots) > 1 else name)
            lo = min(rows["x"].min(), rows["accuracy"].min(), 0.4) - 0.02
            hi = max(rows["x"].max(), rows["accuracy"].max(), 0.6) + 0.02
            ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="in = out")
            ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel=f"in-domain accuracy ({task})",
                   ylabel=f"out-of-domain accuracy ({ood})")
            ax.grid(alpha=0.3)
            caption = (f"{model}, {task}: in-domain vs {ood} accuracy; small markers are single runs (data seeds), "
                       "large ones the means; points above the diagonal generalise better than in-domain.")
            figures.append(_finish(fig, ax, f"{model}: {task} -> {ood}", caption, out_dir,
                                   _slug("in_vs_ood", model, task, ood)))
    return figures


def shots_axis(ax, shots: list[int]) -> None:
    """A log-2 axis with a tick at each number of shots, labelled as the number (4, 16 -- not 2², 2⁴); labels
    turn when there are many, so they never overlap."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(int(k)) for k in shots])
    ax.minorticks_off()
    if len(shots) > 6:
        ax.tick_params(axis="x", labelrotation=45)


def accuracy_vs_shots(df: pd.DataFrame, out_dir: str) -> list[tuple[str, list[str]]]:
    ok = _overall(df)
    figures = []
    for (model, task), part in ok.groupby(["model", "task"], sort=False):
        if part["shots"].nunique() < 2:
            continue
        sets = eval_set_order(part)
        fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 4), squeeze=False)
        colors = _colors(part["label"])
        for ax, name in zip(axes[0], sets):
            rows = part[part["eval_set"] == name]
            for lab, g in rows.groupby("label", sort=False):
                stats = g.groupby("shots")["accuracy"].agg(["mean", "std"]).fillna(0.0)
                ax.plot(stats.index, stats["mean"], marker="o", color=colors[lab], label=lab)
                ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                                color=colors[lab], alpha=0.15)
            shots_axis(ax, sorted(part["shots"].unique()))
            ax.set(xlabel="shots (k)", ylabel="accuracy", title=name)
            ax.grid(alpha=0.3)
        caption = f"{model}, {task}: accuracy vs number of shots; bands are one standard deviation over seeds."
        figures.append(_finish(fig, axes[0][-1], f"{model}: {task}", caption, out_dir, _slug("shots", model, task)))
    return figures


def accuracy_vs_cost(df: pd.DataFrame, out_dir: str) -> list[tuple[str, list[str]]]:
    ok = _overall(df)
    figures = []
    for (model, task), part in ok.groupby(["model", "task"], sort=False):
        rows = part[part["in_domain"] == True]  # noqa: E712
        if rows.empty:
            continue
        colors = _colors(rows["label"])
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (col, xlabel) in zip(axes, (("run_seconds", "time per run: adaptation + evaluation (s)"),
                                            ("peak_memory_gib", "peak memory (GiB)"))):
            for (lab, k), g in rows.groupby(["label", "shots"], sort=False):
                ax.errorbar(g[col].mean(), g["accuracy"].mean(), xerr=g[col].std() if len(g) > 1 else None,
                            yerr=g["accuracy"].std() if len(g) > 1 else None, fmt="o", color=colors[lab],
                            capsize=3, label=lab if k == rows["shots"].min() else None)
                ax.annotate(f"k={k}", (g[col].mean(), g["accuracy"].mean()), fontsize=7,
                            xytext=(4, 4), textcoords="offset points")
            ax.set(xlabel=xlabel, ylabel=f"in-domain accuracy ({task})")
            ax.grid(alpha=0.3)
        axes[0].set_xscale("log")
        axes[0].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # minor labels crowd a log axis
        caption = (f"{model}, {task}: in-domain accuracy against what a run costs (means over seeds, bars: one "
                   "standard deviation); time is adaptation plus evaluation, model loading left out.")
        figures.append(_finish(fig, axes[1], f"{model}: {task} accuracy vs cost", caption, out_dir,
                               _slug("cost", model, task)))
    return figures


def learning_curves(records: list, out_dir: str) -> list[tuple[str, list[str]]]:
    """Accuracy at each evaluation point of fine-tuning runs (mean over seeds), per model x task."""
    curves: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for rec in records:
        history = getattr(rec.method_info, "history", None) or []
        if rec.status != "ok" or len(history) < 2:
            continue
        spec = rec.spec
        key = (spec["model"]["name"], rec.task_name)
        lab = label(spec["method"], spec.get("trainable"))
        for point in history:
            for name, m in point["metrics"].items():
                curves[key][(lab, name)][point["step"]].append(m["accuracy"])
    figures = []
    for (model, task), lines in curves.items():
        sets = list(dict.fromkeys(name for _, name in lines))
        fig, axes = plt.subplots(1, len(sets), figsize=(4.6 * len(sets), 4), squeeze=False)
        colors = _colors(lab for lab, _ in lines)
        for ax, name in zip(axes[0], sets):
            for (lab, set_name), by_step in lines.items():
                if set_name != name:
                    continue
                steps = sorted(by_step)
                ax.plot(steps, [np.mean(by_step[s]) for s in steps], marker=".", color=colors[lab], label=lab)
            ax.set(xlabel="optimizer step", ylabel="accuracy", title=name)
            ax.grid(alpha=0.3)
        caption = f"{model}, {task}: accuracy at each evaluation point of fine-tuning (mean over seeds)."
        figures.append(_finish(fig, axes[0][-1], f"{model}: {task} fine-tuning", caption, out_dir,
                               _slug("curves", model, task)))
    return figures


# The cost curve's three paths: legend text and colour, the same in both figures.
PATHS = {ICL: ("ICL, context re-encoded per query", "tab:red"), ICL_CACHED: ("ICL, context's KV cache", "tab:orange"),
         DISTILLED: ("distilled student, no context", "tab:blue")}


def cost_curve(curves: dict[tuple[str, str], CostCurve], out_dir: str) -> list[tuple[str, list[str]]]:
    """Per model x context: per-query cost vs context length L, and cumulative cost vs queries at the largest L."""
    figures = []
    for (model, context), points in curves.items():
        figures.append(_per_query_vs_length(model, context, points, out_dir))
        figures.append(_cumulative(model, context, *points[-1], out_dir))
    return figures


def _per_query_vs_length(model: str, context: str, points: CostCurve, out_dir: str) -> tuple[str, list[str]]:
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (text, color) in PATHS.items():
        measured = [(length, paths[name]) for length, paths in points if name in paths]
        if not measured:
            continue
        lengths = [length for length, _ in measured]
        axes[0].plot(lengths, [c.per_query_seconds for _, c in measured], marker="o", color=color, label=text)
        axes[1].plot(lengths, [c.peak_memory_bytes / 2**20 for _, c in measured], marker="o", color=color, label=text)
    axes[0].set_yscale("log")
    axes[0].set(ylabel="seconds per query")
    axes[1].set(ylabel="peak memory (MiB)")
    lengths = [length for length, _ in points]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(length) for length in lengths])
        ax.minorticks_off()
        ax.set(xlabel="context length L (tokens)")
        ax.grid(alpha=0.3)
    caption = (f"{model}, context {context}: what one query costs (batch size 1, next-token distributions over "
               "the query) against the context's length; peak memory is the process' while answering, model "
               "weights included.")
    return _finish(fig, axes[1], f"{model}: per-query cost vs context length", caption, out_dir,
                   _slug("cost_curve", model, context))


def _cumulative(model: str, context: str, length: int, paths: dict, out_dir: str) -> tuple[str, list[str]]:
    """setup + n x per-query for each path, with the student's break-even against each ICL path marked."""
    student = paths.get(DISTILLED)
    crossings = {base: break_even(paths[base], student) for base in ICL_PATHS if base in paths and student}
    finite = [n for n in crossings.values() if n is not None]
    n = np.linspace(0, max(10.0, 2 * max(finite)) if finite else 100.0, 200)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, (text, color) in PATHS.items():
        if name in paths:
            ax.plot(n, cumulative_seconds(paths[name], n), color=color, label=text)
    for base, at in crossings.items():
        if at is not None:
            ax.plot([at], [cumulative_seconds(student, at)], marker="o", color="black")
            ax.annotate(f"break-even vs {base}: {at:.1f} queries", (at, cumulative_seconds(student, at)),
                        fontsize=7, xytext=(6, 8), textcoords="offset points")
    if student is not None:  # the steep ICL line may leave the top: the crossings and the student stay in view
        ax.set_ylim(0, 1.6 * max(cumulative_seconds(student, x) for x in [n[-1], *finite]) or None)
    if student is not None and not finite:
        ax.text(0.02, 0.97, "no break-even: the student is no cheaper per query", transform=ax.transAxes,
                fontsize=8, va="top")
    ax.set(xlabel="number of queries", ylabel="cumulative seconds (one-off cost included)")
    ax.grid(alpha=0.3)
    caption = (f"{model}, context {context} at L = {length} tokens: total seconds to answer n queries; the "
               "student's line starts at the cost of distilling (teacher pass + training) and crosses an ICL "
               "line at the break-even point (marked), after which distilling is cheaper in total.")
    return _finish(fig, ax, f"{model}: cumulative cost at L = {length}", caption, out_dir,
                   _slug("cost_cumulative", model, context))
