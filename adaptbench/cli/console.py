"""The one-screen table printed at the end of ``adaptbench run``."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table

from .._util.secrets import redact
from ..methods.cd.judge import ALL_CHECKS
from ..store.record import RunRecord, SliceMetrics, load_record

STATUS_STYLE = {"ok": "green", "skipped": "yellow", "failed": "red", "elsewhere": "dim"}


def _gib(n: int | None) -> str:
    return f"{n / 2**30:.2f}" if n else "-"


def _metric_text(slices: dict[str, SliceMetrics]) -> str:
    """'0.712* mcc 0.31' from an eval set's ``all`` slice; ``*``: some examples were not scored."""
    all_ = slices.get("all") or SliceMetrics()
    mark = "*" if all_.n_unscored else ""
    parts = [f"{all_.accuracy:.3f}{mark}"] if all_.accuracy is not None else []
    parts += [f"{m} {getattr(all_, m):.3f}" for m in ("mcc", "f1") if getattr(all_, m) is not None]
    return " ".join(parts) or "-"


def run_line(rec: dict | RunRecord, i: int, n: int) -> str:
    """One line per finished run: what ran and what came out (rich markup).

    ``[3/12] 1a2b3c4d pbft lora k=16 seed=0 ok  rte 0.560  hans 0.500  41.2 s  0.61 GiB``; a skipped or failed
    run ends with its reason instead of its metrics."""
    rec = load_record(rec)
    spec = rec.spec
    what = " ".join(p for p in (spec["method"], spec.get("trainable") or "", f"k={spec['shots']}",
                                f"seed={spec['data_seed']}") if p)
    status = rec.status
    head = f"[{i}/{n}] {rec.run_id[:8]} {what} [{STATUS_STYLE.get(status, '')}]{status}[/]"
    seconds, peak = rec.total_seconds, rec.peak_memory_bytes
    if status == "elsewhere":
        return f"{head}: {escape(rec.reason or '')}"
    if status != "ok":
        return f"{head} ({seconds:.1f} s): {escape(redact(rec.reason or ''))}"
    parts = [f"{escape(name)} {_metric_text(m)}" for name, m in rec.metrics.items()]
    if _dropped(rec):  # fewer training examples than k: they did not fit the window
        parts.append(f"[yellow]{_dropped(rec)} of {spec['shots']} training examples dropped (too long)[/]")
    if _recovered(rec):
        parts.append(f"recovered {_recovered(rec)}")
    parts += _judged(rec)
    parts += [f"{seconds:.1f} s", f"{_gib(peak)} GiB"]
    parts += _resumed(rec.method_info)
    return f"{head}  " + "  ".join(parts)


def _resumed(info) -> list[str]:
    """A killed run that went on: from which step, what it had trained before, what the kills lost, and
    whether the teacher's targets were reused."""
    out = []
    resumed = getattr(info, "resumed_from_step", None)
    if resumed is not None:
        lost = getattr(info, "lost_steps", None)
        out.append(f"[yellow]resumed from step {resumed}[/] (+{info.train_seconds_before_resume:.1f} s trained before"
                   + (f"; {lost} steps, {info.lost_seconds:.1f} s lost" if lost is not None else "") + ")")
    reused = getattr(info, "teacher_reused", None)
    if reused:
        out.append(f"[yellow]teacher targets reused[/] (+{reused['seconds']:.1f} s before)")
    shared = getattr(info, "teacher_shared", None)
    if shared:
        out.append(f"teacher pass shared with {shared['run_id']} (+{shared['seconds']:.1f} s there)")
    return out


def _unscored_text(record: RunRecord) -> str:
    """'rte 3/100' for each eval set of the run with examples left out of its metrics (did not fit)."""
    parts = []
    for name, slices in record.metrics.items():
        all_ = slices.get("all") or SliceMetrics()
        if all_.n_unscored:
            parts.append(f"{name} {all_.n_unscored}/{all_.n + all_.n_unscored}")
    return ", ".join(parts)


def _recovered(rec: RunRecord) -> str:
    """'63% of 1,234 tok' for a sequence distillation run with held-out inputs; '' otherwise."""
    held = getattr(rec.method_info, "heldout", None)
    share = held.recovered if held is not None else None
    return "" if share is None else f"{share:.0%} of {rec.method_info.context_tokens or 0:,} tok"


def _judged(rec: RunRecord) -> list[str]:
    """'checks student 4/10 teacher 9/10 base 1/10' (replies passing every check) and the same for exact match,
    for a run that judged its held-out replies."""
    judged = getattr(rec.method_info, "judged", None)
    if judged is None:
        return []
    out = []
    for label, block in (("checks", (judged.checks or {}).get(ALL_CHECKS)),
                         ("exact match", (judged.answers or {}).get("exact_match"))):
        if block:
            out.append(label + " " + " ".join(f"{m} {block[m].k}/{block[m].n}" for m in ("student", "teacher", "base")
                                              if m in block))
    return out


def _dropped(rec: RunRecord) -> int:
    """Training examples a fine-tuning run left out because they did not fit the model's window."""
    return getattr(rec.method_info, "train_dropped_too_long", None) or 0


DROPPED_CAPTION = "dropped: training examples left out of fine-tuning (longer than the model's window)"
UNSCORED_CAPTION = "* mean over fewer examples: k of n examples unscored (did not fit the window), see column unscored"


def _task(spec: dict) -> str:
    return spec["task"] if isinstance(spec["task"], str) else spec["task"]["name"]


def _trainable(spec: dict) -> str:
    return spec.get("trainable") or ""


# Columns: (header, value of a spec, shown always?).  The others get a column only when their value
# differs between runs; a shared value goes into the title instead.
COLUMNS = [("model", lambda s: s["model"]["name"], False), ("task", _task, False),
           ("method", lambda s: s["method"], True), ("trainable", _trainable, False),
           ("k", lambda s: str(s["shots"]), True), ("seed", lambda s: str(s["data_seed"]), True)]


def run_table(records: list[dict], title: str = "", width: int | None = None) -> Table:
    """Runs as rows: metrics of every eval set ('all' slice), total seconds, peak memory.

    ``width`` (the terminal's): where the table would be wider, the names (model, task, method, trainable)
    are shortened with an ellipsis; run ids, k, seed, status and numbers are never cut."""
    records = [load_record(r) for r in records]
    eval_names = list(dict.fromkeys(name for r in records for name in r.metrics))
    shown = [(h, get) for h, get, always in COLUMNS if always or len({get(r.spec) for r in records}) > 1]
    fixed = [get(records[0].spec) for h, get, always in COLUMNS
             if records and (h, get) not in shown and get(records[0].spec)]
    table = Table(title=escape(" ".join([title, *fixed]).strip()), header_style="bold underline", box=None,
                  padding=(0, 1), pad_edge=False)
    columns: list[tuple[str, list[str], dict]] = [("run", [r.run_id[:8] for r in records], {})]
    columns += [(h, [get(r.spec) for r in records], {"shrink": h in SHRINKABLE}) for h, get in shown]
    columns.append(("status", [r.status for r in records], {"style": True}))
    columns += [(name, [_metric_text(r.metrics[name]) if name in r.metrics else "-" for r in records],
                 {"justify": "right"}) for name in eval_names]
    unscored = any(_unscored_text(r) for r in records)
    if unscored:  # a mean over fewer examples than the eval set has must not pass unnoticed
        columns.append(("unscored", [_unscored_text(r) for r in records], {}))
    recovered = any(_recovered(r) for r in records)
    if recovered:  # sequence distillation: the share of the context's effect on held-out inputs
        columns.append(("recovered", [_recovered(r) or "-" for r in records], {"justify": "right"}))
    dropped = any(_dropped(r) for r in records)
    if dropped:  # fine-tuned on fewer examples than k: the others did not fit the window
        columns.append(("dropped", [str(_dropped(r) or "-") for r in records], {"justify": "right"}))
    columns += [("s", [f"{r.total_seconds:.1f}" for r in records], {"justify": "right"}),
                ("GiB", [_gib(r.peak_memory_bytes) for r in records], {"justify": "right"})]
    _fit(columns, width)
    for header, cells, how in columns:  # min_width: rich's last resort squeezes every column evenly otherwise
        table.add_column(escape(header), no_wrap=True, justify=how.get("justify", "left"),
                         min_width=max([len(c) for c in cells] + [len(header)]))
    for i in range(len(records)):
        table.add_row(*[f"[{STATUS_STYLE.get(cells[i], '')}]{cells[i]}[/]" if how.get("style") else escape(cells[i])
                        for _, cells, how in columns])
    table.caption = "eval set columns: accuracy ('all' slice; mcc/f1 where the task has them)"
    if recovered:
        table.caption += ("\nrecovered: share of the context's effect the student recovered on held-out inputs, "
                          "1 - KL(teacher || student) / KL(teacher || base)")
    if unscored:
        table.caption += "\n" + UNSCORED_CAPTION
    if dropped:
        table.caption += "\n" + DROPPED_CAPTION
    return table


SHRINKABLE = ("model", "task", "method", "trainable")  # names: shortened where a terminal is too narrow


def _fit(columns: list[tuple[str, list[str], dict]], width: int | None, least: int = 4) -> None:
    """Shorten the shrinkable columns' cells (and headers), widest first, until the table fits ``width``."""
    widths = [max([len(c) for c in cells] + [len(header)]) for header, cells, _ in columns]
    excess = sum(widths) + len(widths) - 1 - (width or 10**9)
    while excess > 0:
        shrinkable = [i for i, (_, _, how) in enumerate(columns) if how.get("shrink") and widths[i] > least]
        if not shrinkable:
            break
        i = max(shrinkable, key=lambda j: widths[j])
        widths[i] -= 1
        excess -= 1
    for i, (header, cells, how) in enumerate(columns):
        if how.get("shrink"):
            cut = widths[i]
            columns[i] = (_cut(header, cut), [_cut(c, cut) for c in cells], how)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def plan_table(specs: list[dict], pending: set[str], title: str) -> Table:
    """The runs of a sweep (identity dicts with ``run_id``) and whether each is still to do."""
    shown = [(h, get) for h, get, always in COLUMNS if always or len({get(s) for s in specs}) > 1]
    fixed = [get(specs[0]) for h, get, always in COLUMNS if specs and (h, get) not in shown and get(specs[0])]
    table = Table(title=escape(" ".join([title, *fixed])), header_style="bold", box=box.SIMPLE_HEAD)
    for col in ["run id"] + [h for h, _ in shown] + ["state"]:
        table.add_column(col, no_wrap=True)
    for s in specs:
        table.add_row(s["run_id"], *[escape(get(s)) for _, get in shown],
                      "pending" if s["run_id"] in pending else "done")
    return table


def problems(records: list) -> list[str]:
    """One line per skipped or failed run, and per default eval set that could not be loaded."""
    out = []
    for r in map(load_record, records):
        if r.status in ("failed", "skipped"):
            out.append(f"{r.run_id[:8]} {r.status}: {redact(r.reason or '')}")
        for name, why in r.eval_sets_unavailable.items():
            out.append(f"{r.run_id[:8]} eval set {name} not evaluated: {why}")
    return out
