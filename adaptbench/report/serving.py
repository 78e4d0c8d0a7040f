"""The serving table (``cd.serving``): per run, way of serving and regime, the memory each user holds and
the throughput per batch, the users a memory budget holds; and the ratios against the cached context in
Cartridges' terms (memory per user, throughput at the batch that fits)."""

from __future__ import annotations

import pandas as pd

from ..measure.breakeven import ICL_CACHED
from .aggregate import context_label

TITLE = "Serving many users"
NOTE = ("Per way of serving a context to many users, measured after training on the run's timed queries: shared -- "
        "one context for all users, one state resident; per user -- each user's own context of this length "
        "(copies stand for them), one state per user, a batch's rows each after its user's. per-user MiB: the "
        "rise of the process' resident memory per user built (the tensors' bytes beside it, a check); q/s at B: "
        "B queries in one forward (median of the repeats); users within the budget: resident memory + shared "
        "state + users' states + the largest batch that fits (a merged model counts instead of the base model); "
        "'no limit': nothing per user. Exact values in serving.csv.")


def serving_frame(records: list) -> pd.DataFrame:
    """One row per finished run, way of serving and regime that ``cd.serving`` measured."""
    rows = []
    for rec in records:
        serving = getattr(rec.method_info, "serving", None) if rec.status == "ok" else None
        if not serving or "paths" not in serving:
            continue
        info = rec.method_info
        for option, regimes in serving["paths"].items():
            for regime, m in regimes.items():
                row = {"model": rec.spec["model"]["name"], "context": context_label(info),
                       "context_tokens": info.context_tokens, "option": option, "regime": regime,
                       "per_user_bytes_measured": m["per_user_bytes_measured"],
                       "per_user_bytes_shapes": m["per_user_bytes_shapes"],
                       "shared_bytes_measured": m.get("shared_bytes_measured", 0),
                       "threads": serving["threads"], "memory_budget_bytes": serving.get("memory_budget_bytes"),
                       "run_id": rec.run_id}
                for b, v in m["batch"].items():
                    row[f"qps_batch_{b}"] = v["queries_per_second"]
                within = m.get("within_budget") or {}
                row.update(users_within_budget=within.get("users"), batch_within_budget=within.get("batch"),
                           qps_within_budget=within.get("queries_per_second"))
                rows.append(row)
    return pd.DataFrame(rows)


def _mib(v) -> str:
    return "-" if pd.isna(v) else f"{v / 2**20:,.2f}"


def display(table: pd.DataFrame) -> pd.DataFrame:
    shown = table[["model", "context", "context_tokens", "option", "regime"]].rename(columns={"context_tokens": "L"})
    shown["per-user MiB (shapes)"] = [f"{_mib(m)} ({_mib(s)})" for m, s in
                                      zip(table["per_user_bytes_measured"], table["per_user_bytes_shapes"])]
    shown["shared MiB"] = table["shared_bytes_measured"].map(_mib)
    for col in sorted((c for c in table.columns if c.startswith("qps_batch_")), key=lambda c: int(c.rsplit("_", 1)[1])):
        shown[f"q/s at {col.rsplit('_', 1)[1]}"] = table[col].map(lambda v: "-" if pd.isna(v) else f"{v:.3g}")
    if table["memory_budget_bytes"].notna().any():
        shown["users within budget"] = [
            "-" if pd.isna(b) else ("no limit" if pd.isna(u) else f"{int(u):,}")
            for u, b in zip(table["users_within_budget"], table["batch_within_budget"])]
        shown["q/s there (batch)"] = [
            "-" if pd.isna(q) else f"{q:.3g} ({int(b)})" for q, b in zip(table["qps_within_budget"], table["batch_within_budget"])]
    return shown


def ratios(table: pd.DataFrame) -> list[str]:
    """Per run, each way of serving per user against the cached context: memory per user and the throughput at
    the batch that fits the budget (or at the largest batch measured), as Cartridges states its ratios."""
    out = []
    if table.empty:
        return out
    per_user = table[table["regime"] == "per_user"]
    for run_id, rows in per_user.groupby("run_id", sort=False):
        rows = rows.set_index("option")
        if ICL_CACHED not in rows.index:
            continue
        base, parts = rows.loc[ICL_CACHED], []
        for option, row in rows.drop(index=ICL_CACHED).iterrows():
            if row["per_user_bytes_measured"] > 0 and base["per_user_bytes_measured"] > 0:
                r = base["per_user_bytes_measured"] / row["per_user_bytes_measured"]
                text = f"{option}: {r:.3g}x less memory per user" if r >= 1 else f"{option}: {1 / r:.3g}x the memory per user"
            else:
                text = f"{option}: no per-user memory measured"
            if pd.notna(row["qps_within_budget"]) and pd.notna(base["qps_within_budget"]):
                text += (f", {row['qps_within_budget'] / base['qps_within_budget']:.3g}x the throughput at the batch "
                         f"that fits ({int(row['batch_within_budget'])} vs {int(base['batch_within_budget'])})")
            parts.append(text)
        head = f"{base['model']}, {base['context']}, L={base['context_tokens']} (run {run_id[:8]}), vs icl_cached per user"
        out.append(f"{head}: " + "; ".join(parts))
    return out
