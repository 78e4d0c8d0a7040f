"""Mean and spread over seeds: the numbers the reference study's tables and plots are made of.

Runs are grouped by everything in their spec except the seeds; the columns that tell groups apart
are the axes that vary in the results (model, task, method, trainable, shots, and any setting such
as ``spec.train.lr`` that differs between runs).
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from statistics import mean

import pandas as pd

from ..measure.breakeven import ICL_PATHS, PathCost, cost_curve_table
from ..store.results import DISTILLED

ALWAYS = ["model", "task", "method", "trainable", "shots"]
SEEDS = {"spec.data_seed", "spec.train_seed"}
COSTS = ["adapt_seconds", "eval_seconds", "total_seconds", "peak_memory_gib", "trainable_params"]
METRICS = ["accuracy", "mcc", "f1"]


def group_columns(df: pd.DataFrame) -> list[str]:
    """ALWAYS plus the spec settings that differ between runs (seeds excluded)."""
    spec_cols = [c for c in df.columns if c.startswith("spec.") and c not in SEEDS]
    shown = {"spec.model.name", "spec.task", "spec.method", "spec.trainable", "spec.shots"}
    # a setting counts where it is set: train.lr is absent from ICL runs, which does not make it vary
    varying = [c for c in spec_cols if c not in shown and df[c].dropna().astype(str).nunique() > 1]
    return ALWAYS + varying


def eval_set_order(df: pd.DataFrame) -> list[str]:
    """In-domain sets first, then the others, each in order of first appearance."""
    sets = df.dropna(subset=["eval_set"]).drop_duplicates("eval_set")
    if sets.empty:  # runs without eval sets (task: none) have no in_domain column either
        return []
    return list(sets.sort_values("in_domain", ascending=False, kind="stable")["eval_set"])


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per group: n runs, mean and std over seeds of each eval set's overall metrics, costs."""
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return pd.DataFrame()
    keys = group_columns(ok)
    overall = ok[ok["slice"] == "all"]
    per_run = ok.drop_duplicates("run_id").copy()
    per_run[keys] = per_run[keys].astype(object).where(per_run[keys].notna(), "")
    measured = [c for c in DISTILLED if c in per_run and per_run[c].notna().any()]
    dropped = {"train_dropped": ("train_dropped", "sum")} if "train_dropped" in per_run and (
        per_run["train_dropped"].fillna(0) > 0).any() else {}
    out = per_run.groupby(keys, sort=False, dropna=False).agg(
        n=("run_id", "count"), **{f"{c}": (c, "mean") for c in COSTS + measured}, **dropped).reset_index()
    for name in eval_set_order(overall):
        part = overall[overall["eval_set"] == name].copy()
        part[keys] = part[keys].astype(object).where(part[keys].notna(), "")
        for metric in METRICS:
            if metric not in part or part[metric].isna().all():
                continue
            stats = part.groupby(keys, sort=False, dropna=False)[metric].agg(["mean", "std"]).reset_index()
            stats = stats.rename(columns={"mean": f"{name} {metric}", "std": f"{name} {metric} std"})
            out = out.merge(stats, on=keys, how="left")
        if "n_unscored" in part and (part["n_unscored"].fillna(0) > 0).any():
            out = out.merge(_unscored(part, keys, name), on=keys, how="left")
    return out


def _unscored(part: pd.DataFrame, keys: list[str], name: str) -> pd.DataFrame:
    """Per group, summed over its runs: examples of eval set ``name`` left out of its metrics (they did not
    fit the model's window) and all its examples -- a mean over fewer examples than it says must show."""
    unscored = part["n_unscored"].fillna(0).astype(int)
    counts = part[keys].assign(**{f"{name} unscored": unscored, f"{name} examples": part["n"].astype(int) + unscored})
    return counts.groupby(keys, sort=False, dropna=False).sum().reset_index()


def unscored_sets(summary: pd.DataFrame) -> list[str]:
    """Eval sets of which some group has unscored examples (they have ``<name> unscored`` columns)."""
    return [c.removesuffix(" unscored") for c in summary.columns if c.endswith(" unscored")]


UNSCORED_NOTE = ("* some examples were not scored (they did not fit the model's window) and are not in the mean; "
                 "unscored: k/n examples of each such eval set, summed over the row's runs")


def metric_columns(summary: pd.DataFrame) -> list[str]:
    return [c for c in summary.columns if any(c.endswith(f" {m}") for m in METRICS)]


def fmt_mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "-"
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


#: Held-out measures of distilled contexts in the display tables: (column, header, format).
DISTILLED_DISPLAY = [("context_tokens", "L", "{:,.0f}"), ("kl_base", "KL base", "{:.3f}"),
                     ("kl_student", "KL student", "{:.3f}"), ("recovered", "recovered", "{:.0%}"),
                     ("top1_agreement", "top-1 agree", "{:.0%}"), ("judged_n", "n judged", "{:,.0f}")]


#: Judged held-out replies (all checks passed, exact match, F1) of base, teacher and student: (measure, header, format).
JUDGED_DISPLAY = [("checks", "checks b/t/s", "{:.0%}"), ("exact_match", "EM b/t/s", "{:.0%}"),
                  ("f1", "F1 b/t/s", "{:.2f}"), ("edit_similarity", "ES b/t/s", "{:.2f}")]


def display_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with 'mean ± std' strings and rounded costs, for Markdown, HTML and the terminal."""
    keys = [c for c in summary.columns if c in ALWAYS or c.startswith("spec.")]
    shown = summary[keys].copy()
    shown.columns = [c.removeprefix("spec.") for c in keys]
    shown["n"] = summary["n"]
    for col in metric_columns(summary):
        shown[col] = [fmt_mean_std(m, s) for m, s in zip(summary[col], summary[f"{col} std"])]
        name = col.rsplit(" ", 1)[0]
        if f"{name} unscored" in summary:
            shown[col] = [t + "*" if k > 0 else t for t, k in zip(shown[col], summary[f"{name} unscored"].fillna(0))]
    sets = unscored_sets(summary)
    if sets:
        shown["unscored"] = [", ".join(f"{n} {int(row[f'{n} unscored'])}/{int(row[f'{n} examples'])}" for n in sets
                                       if row[f"{n} unscored"] > 0) for _, row in summary.iterrows()]
    for col, header, fmt in DISTILLED_DISPLAY:
        if col in summary:
            shown[header] = summary[col].map(lambda v, fmt=fmt: "-" if pd.isna(v) else fmt.format(v))
    for measure, header, fmt in JUDGED_DISPLAY:  # base / teacher / student in one cell
        cols = [f"{measure}_{m}" for m in ("base", "teacher", "student")]
        if all(c in summary for c in cols):
            shown[header] = [" / ".join("-" if pd.isna(v) else fmt.format(v) for v in row)
                             for row in summary[cols].itertuples(index=False)]
    if "train_dropped" in summary:  # examples fine-tuning left out (longer than the window), summed over runs
        shown["train dropped"] = summary["train_dropped"].map(lambda v: f"{int(v)}" if v else "-")
    shown["adapt s"] = summary["adapt_seconds"].map(lambda v: f"{v:.1f}")
    shown["eval s"] = summary["eval_seconds"].map(lambda v: f"{v:.1f}")
    shown["peak GiB"] = summary["peak_memory_gib"].map(lambda v: f"{v:.2f}")
    shown["trainable params"] = summary["trainable_params"].map(lambda v: "-" if pd.isna(v) else f"{int(v):,}")
    return shown


# The cost curve (cd.query_costs): per model and context, one point per context length L.
CostCurve = list[tuple[int, dict[str, PathCost]]]


def context_label(info) -> str:
    """The context a curve is about: its file's name, or ``demonstrations``."""
    return os.path.basename(info.context_file) if info.context_file else (info.context or "")


def cost_curves(records: list) -> dict[tuple[str, str], CostCurve]:
    """(model, context) -> [(L, {path: PathCost})] sorted by L, from the finished runs that measured query
    costs; runs at the same L (data or training seeds) are averaged, path by path, over the paths all measured."""
    points: dict = defaultdict(lambda: defaultdict(list))
    for rec in records:
        info = rec.method_info
        if rec.status == "ok" and getattr(info, "query_costs", None):
            key = (rec.spec["model"]["name"], context_label(info))
            points[key][info.context_tokens].append(info.query_costs)
    return {key: [(length, _mean_paths(runs)) for length, runs in sorted(by_length.items())]
            for key, by_length in points.items()}


def _mean_paths(runs: list[dict]) -> dict[str, PathCost]:
    names = [name for name in runs[0] if all(name in run for run in runs)]
    return {name: PathCost(name, mean(r[name].setup_seconds for r in runs), mean(r[name].per_query_seconds for r in runs),
                           int(mean(r[name].peak_memory_bytes for r in runs))) for name in names}


def cost_curve_frame(curves: dict[tuple[str, str], CostCurve]) -> pd.DataFrame:
    """All curves as one table (:func:`adaptbench.breakeven.cost_curve_table` with model and context columns)."""
    frames = [cost_curve_table(points).assign(model=model, context=context)
              for (model, context), points in curves.items()]
    table = pd.concat(frames, ignore_index=True)
    return table[["model", "context"] + [c for c in table.columns if c not in ("model", "context")]]


def _queries(n: float) -> str:
    """A break-even cell: the first whole query count from which distilling costs no more; never; or blank."""
    if math.isnan(n):
        return ""
    return "never" if math.isinf(n) else f"{math.ceil(n):,}"


def display_cost_curve(table: pd.DataFrame) -> pd.DataFrame:
    """The cost-curve table with rounded numbers and readable break-even cells."""
    shown = table[["model", "context", "context_tokens", "path"]].rename(columns={"context_tokens": "L"})
    shown["one-off s"] = table["setup_seconds"].map(lambda v: f"{v:.3g}")
    shown["per query s"] = table["per_query_seconds"].map(lambda v: f"{v:.3g}")
    shown["peak MiB"] = table["peak_memory_bytes"].map(lambda v: f"{v / 2**20:,.0f}")
    for base in ICL_PATHS:
        shown[f"break-even vs {base}"] = table[f"break_even_vs_{base}"].map(_queries)
    return shown
