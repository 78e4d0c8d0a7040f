"""The one-screen table printed at the end of ``adaptbench run``."""

from __future__ import annotations

from rich.table import Table

STATUS_STYLE = {"ok": "green", "skipped": "yellow", "failed": "red"}


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "-"


def _metric_text(metrics: dict) -> str:
    """'acc 0.712 mcc 0.31' from an eval set's ``all`` slice."""
    all_ = metrics.get("all", {})
    parts = [f"{all_['accuracy']:.3f}"] if "accuracy" in all_ else []
    parts += [f"{m} {all_[m]:.3f}" for m in ("mcc", "f1") if m in all_]
    return " ".join(parts) or "-"


def _task(spec: dict) -> str:
    return spec["task"] if isinstance(spec["task"], str) else spec["task"]["name"]


# Columns shown only when their value differs between runs.
OPTIONAL = {"model": lambda spec: spec["model"]["name"], "task": _task}


def run_table(records: list[dict], title: str = "") -> Table:
    """Runs as rows; model and task get a column only when they vary (else they go in the title)."""
    eval_names: list[str] = []
    for r in records:
        for name in r.get("metrics", {}):
            if name not in eval_names:
                eval_names.append(name)
    varying = {key: len({get(r["spec"]) for r in records}) > 1 for key, get in OPTIONAL.items()}
    fixed = [get(records[0]["spec"]) for key, get in OPTIONAL.items() if records and not varying[key]]
    table = Table(title=" ".join([title, *fixed]).strip(), header_style="bold", show_lines=False)
    cols = ["run"] + [k for k, v in varying.items() if v] + ["method", "k", "seed", "status"]
    for col in cols:
        table.add_column(col, no_wrap=True)
    for name in eval_names:
        table.add_column(f"{name} acc", justify="right")
    table.add_column("s", justify="right")
    table.add_column("GiB", justify="right")
    for r in records:
        spec = r["spec"]
        costs = r.get("costs", {})
        status = r["status"]
        row = [r["run_id"][:8]] + [get(spec) for key, get in OPTIONAL.items() if varying[key]]
        row += [spec["method"], str(spec["shots"]), str(spec["data_seed"]), f"[{STATUS_STYLE.get(status, '')}]{status}[/]"]
        row += [_metric_text(r["metrics"][n]) if n in r.get("metrics", {}) else "-" for n in eval_names]
        row += [f"{sum(p['seconds'] for p in costs.values()):.1f}",
                _gib(max((p["peak_memory_bytes"] for p in costs.values()), default=0))]
        table.add_row(*row)
    return table


def problems(records: list[dict]) -> list[str]:
    """One line per skipped or failed run, and per default eval set that could not be loaded."""
    out = []
    for r in records:
        if r["status"] in ("failed", "skipped"):
            out.append(f"{r['run_id'][:8]} {r['status']}: {r.get('reason', '')}")
        for name, why in r.get("eval_sets_unavailable", {}).items():
            out.append(f"{r['run_id'][:8]} eval set {name} not evaluated: {why}")
    return out
