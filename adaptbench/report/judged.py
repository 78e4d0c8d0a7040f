"""The report's section on judged held-out replies: per run, each behaviour check's pass rate and each answer
score for the base model, the teacher and the student (with n and 95 % interval), then the replies side by
side with the checks each failed."""

from __future__ import annotations

import html

import pandas as pd

from ..methods.cd.judge import MODELS
from ..store.record import RunRecord

TITLE = "Held-out replies judged"
NOTE = ("Greedy replies to held-out inputs by the base model without the context, the teacher with it and the "
        "distilled student without it, judged by the run's behaviour checks (pass rate) and, for a question file, "
        "by the gold answers (exact match and contains: shares; F1: mean; SQuAD normalisation). Each cell: value "
        "[95 % interval] (Wilson for shares, bootstrap for F1) of n replies.")


def _cell(est) -> str:
    if est is None or est.value is None:
        return "-"
    low, high = est.ci95 or (est.value, est.value)
    count = f" ({est.k}/{est.n})" if est.k is not None else f" (n {est.n})"
    if est.k is not None:
        return f"{est.value:.0%} [{low:.0%}, {high:.0%}]{count}"
    return f"{est.value:.2f} [{low:.2f}, {high:.2f}]{count}"


def models(judged) -> list[str]:
    """The base model, the teacher, the student, then the arms of ``cd.arms`` that replied, in record order."""
    blocks = [per_model for block in (judged.checks, judged.answers) for per_model in (block or {}).values()]
    arms = [m for per_model in blocks[:1] for m in per_model if m not in MODELS]
    return [*MODELS, *arms]


def shares_frame(judged) -> pd.DataFrame:
    """One row per check (then ``all checks``) and per answer score; a column per model (and arm)."""
    names = models(judged)
    rows = [{"measure": name, **{m: _cell(per_model.get(m)) for m in names}}
            for block in (judged.checks, judged.answers) for name, per_model in (block or {}).items()]
    return pd.DataFrame(rows, columns=["measure", *names])


def _reply(row: dict, model: str) -> str:
    failed = (row.get("failed") or {}).get(model) or []
    return row.get(model, "") + ("".join(f"\n✗ {name}" for name in failed) if failed else "")


def replies_frame(judged) -> pd.DataFrame:
    gold = any("gold" in r for r in judged.replies)
    return pd.DataFrame([{"input": r.get("input", ""), **({"gold": " | ".join(r.get("gold", []))} if gold else {}),
                          **{m: _reply(r, m) for m in models(judged)}} for r in judged.replies])


def judged_runs(records: list[RunRecord]) -> list[tuple[str, object]]:
    """(run id, method_info.judged) of every finished run that judged its replies."""
    return [(r.run_id[:8], r.method_info.judged) for r in records
            if r.status == "ok" and getattr(r.method_info, "judged", None) is not None]


def _md(df: pd.DataFrame) -> list[str]:
    cells = df.map(lambda v: " ".join(str(v).replace("\n✗", " ✗").split()).replace("|", "\\|") or " ")
    return ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)] + [
        "| " + " | ".join(row) + " |" for row in cells.astype(str).values.tolist()]


def markdown_lines(runs: list[tuple[str, object]]) -> list[str]:
    lines = ["", f"## {TITLE}", "", NOTE]
    for run_id, judged in runs:
        lines += ["", f"run {run_id}: {judged.n} held-out inputs, replies of at most {judged.reply_tokens} tokens", ""]
        lines += _md(shares_frame(judged)) + [""] + _md(replies_frame(judged))
    return lines


def html_parts(runs: list[tuple[str, object]]) -> list[str]:
    parts = [f"<h2>{html.escape(TITLE)}</h2>", f'<p class="meta">{html.escape(NOTE)}</p>']
    for run_id, judged in runs:
        parts.append(f'<p class="meta">run {html.escape(run_id)}: {judged.n} held-out inputs, replies of at most '
                     f"{judged.reply_tokens} tokens</p>")
        parts.append(shares_frame(judged).to_html(index=False, border=0, escape=True))
        parts.append(replies_frame(judged).to_html(index=False, border=0, escape=True, classes="gen"))
    return parts
