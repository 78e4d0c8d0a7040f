"""``adaptbench show RESULTS_DIR|RUN_ID``: one run, readable in a terminal.

What a user asks of a finished run: what exactly ran (its settings), what came out (metrics per eval
set and slice), what it cost (seconds, peak memory and tokens per phase) and where its files are.
"""

from __future__ import annotations

import os

from rich.console import Group
from rich.markup import escape
from rich.table import Table

from ..report.judged import shares_frame
from ..store.record import RunRecord
from ..store.finding import find_run  # noqa: F401  (show's lookup, also used by export)
from ..store.records import run_dir
from ..store.results import flatten

def _table(title: str, columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", header_style="bold", box=None,
                  padding=(0, 1), pad_edge=False)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right", no_wrap=i > 0)
    return table


def _num(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _short(text: str, limit: int = 160) -> str:
    """A long value (the ICL context's whole text) as its start and its length: ``show`` is for reading."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters; in result.json)"


def render(record: RunRecord, sweep_dir: str, note: str = "") -> Group:
    """Header, settings, metrics per eval set and slice, costs per phase, method details, files."""
    parts = [_header(record, note), _settings(record), _metrics(record), _costs(record), _judged(record), _details(record),
             _files(record, sweep_dir)]
    return Group(*[p for p in parts if p is not None])


def _header(record: RunRecord, note: str) -> str:
    style = {"ok": "green", "skipped": "yellow", "failed": "red"}.get(record.status, "")
    lines = [f"[bold]run {record.run_id}[/] ({escape(record.sweep or '')}): [{style}]{record.status}[/]",
             f"started {record.started_at or '?'}, finished {record.finished_at or '?'}"]
    if record.reason:
        lines.append(f"[{style}]reason:[/] {escape(record.reason)}")
    model = record.model
    if model is not None:
        lines.append(f"model {escape(model.name)} from {escape(model.source)}: {_num(model.n_params)} parameters, "
                     f"{model.dtype} on {model.device}, window {_num(model.window)}")
        lines.append(_precision(record))
    if note:
        lines.append(f"[yellow]note:[/] {escape(note)}")
    return "\n".join(lines)


def _precision(record: RunRecord) -> str:
    """What ``auto`` resolved to and why: the dtype the weights were loaded in, a training run's autocast."""
    spec, resolved = record.spec, record.spec.get("resolved") or {}
    cpu = record.environment.get("cpu_bf16") or {}
    why = ""
    if (record.model.device or "").startswith("cpu") and cpu:
        has = ", ".join(cpu.get("instructions") or []) or "no bfloat16 matrix instructions"
        why = (f": ADAPTBENCH_CPU_BF16={cpu['setting']}, the CPU has {has}" if cpu.get("used") or cpu.get("setting")
               else f": float32 on CPU; the CPU has {has}" + (", ADAPTBENCH_CPU_BF16=1 would compute in bfloat16"
                                                              if cpu.get("instructions") else ""))
    train = spec.get("train")
    if train:
        mixed = train.get("mixed_precision", "no")
        return (f"precision: weights {record.model.dtype}, training autocast {resolved.get('mixed_precision', mixed)}"
                + (f" (auto{why})" if mixed == "auto" else ""))
    written = (spec.get("model") or {}).get("dtype", "auto")
    return f"precision: model.dtype {written} -> {record.model.dtype}" + (f" (auto{why})" if written == "auto" else "")


def _settings(record: RunRecord) -> Table:
    spec = _table("settings", ["setting", "value"])
    spec.columns[1].justify = "left"
    for key, value in flatten(record.spec).items():
        spec.add_row(escape(key), escape(str(value)))
    return spec


def _metrics(record: RunRecord) -> Table | None:
    if not record.metrics:
        return None
    names = [m for m in ("accuracy", "mcc", "f1")
             if any(getattr(s, m) is not None for sl in record.metrics.values() for s in sl.values())]
    table = _table("metrics", ["eval set / slice", "n", *names])
    for eval_set, slices in record.metrics.items():
        in_domain = eval_set in record.eval_sets and record.eval_sets[eval_set].in_domain
        for slice_name, values in slices.items():
            label = eval_set + (" (in-domain)" if in_domain and slice_name == "all" else "")
            label = label if slice_name == "all" else f"  {slice_name}"
            table.add_row(escape(label), _num(values.n), *[_num(getattr(values, m)) for m in names])
    return table


def _costs(record: RunRecord) -> Table | None:
    if not record.costs:
        return None
    table = _table("costs", ["phase", "seconds", "peak GiB", "tokens", "weights", "compute"])
    for phase, c in record.costs.items():
        table.add_row(escape(phase), f"{c.seconds:.2f}", f"{c.peak_memory_bytes / 2**30:.2f}", _num(c.tokens),
                      c.weights_dtype or "-", c.compute_dtype or "-")
    table.add_row("[bold]total[/]", f"{record.total_seconds:.2f}", f"{record.peak_memory_bytes / 2**30:.2f}", "", "",
                  "")
    return table


def _judged(record: RunRecord) -> Table | None:
    """Each behaviour check and answer score of the held-out replies: base, teacher, student, with interval."""
    judged = getattr(record.method_info, "judged", None)
    if judged is None:
        return None
    frame = shares_frame(judged)
    table = _table(f"held-out replies judged ({judged.n}, at most {judged.reply_tokens} tokens)", list(frame.columns))
    for row in frame.itertuples(index=False):
        table.add_row(*[escape(str(v)) for v in row])
    return table


def _details(record: RunRecord) -> Table | None:
    info = record.method_info.model_dump(exclude_none=True)
    shown = {k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))}
    held = info.get("heldout") or {}
    shown.update({f"heldout.{k}": v for k, v in held.items() if not isinstance(v, dict)})
    shown.update({f"heldout.reply.{k}": v for k, v in (held.get("reply") or {}).items()})
    if not shown:
        return None
    table = _table("method details", ["key", "value"])
    # a long value (the ICL context's text) wraps; the key column keeps its width
    table.columns[0].no_wrap, table.columns[0].min_width = True, min(max(map(len, shown)), 32)
    table.columns[1].justify = "left"
    for key, value in shown.items():
        table.add_row(escape(key), escape(_short(_num(value))))
    return table


def _files(record: RunRecord, sweep_dir: str) -> str:
    folder = run_dir(sweep_dir, record.run_id)
    files = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    return f"[bold]files[/] in {escape(folder)}: " + (", ".join(escape(f) for f in files) or "none")
