"""``adaptbench report RESULTS_DIR``: tables (Markdown, CSV), plots (PNG, SVG) and one HTML page.

Everything goes to ``<RESULTS_DIR>/report/``.  The HTML page is self-contained (figures embedded as
data URIs, no script, no external resource), so it opens offline and can be mailed around.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import os
from dataclasses import dataclass, field

import pandas as pd

from . import decision, decision_plots, plots, serving
from .aggregate import UNSCORED_NOTE, cost_curve_frame, cost_curves, display_cost_curve, display_frame, summarize
from .heatmap import niah_heatmaps
from .judged import html_parts as judged_html, judged_runs, markdown_lines as judged_markdown
from ..errors import AdaptbenchError, ResultsWriteError
from ..store.record import RunRecord
from ..store.results import read_results, sweep_dirs, to_frame


@dataclass
class Report:
    out_dir: str
    summary: pd.DataFrame
    table: pd.DataFrame  # the display version ("mean ± std")
    files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    n_records: int = 0
    cost_curve: pd.DataFrame = field(default_factory=pd.DataFrame)  # display version; empty without query costs
    generations: list[tuple[str, str, list[dict]]] = field(default_factory=list)  # (run id, about, side by side)
    judged: list[tuple[str, object]] = field(default_factory=list)  # (run id, method_info.judged)
    decision: pd.DataFrame = field(default_factory=pd.DataFrame)  # display version; empty without cd.arms
    recommendations: list[str] = field(default_factory=list)  # one line per model, context and length
    serving: pd.DataFrame = field(default_factory=pd.DataFrame)  # display version; empty without cd.serving
    serving_ratios: list[str] = field(default_factory=list)  # per run: each way against the cached context


def make_report(results_dir: str, out_dir: str | None = None, queries: int = decision.QUERIES,
                tolerance: float = decision.TOLERANCE, prices: decision.Prices | None = None) -> Report:
    """Read every run under ``results_dir`` and write the report's files; a folder that is not there or holds
    no sweep is an error (nothing is written), as is one the report cannot be written to.  ``queries`` and
    ``tolerance``: what the recommendation among a context's options is made for (:mod:`.decision`); ``prices``:
    an API model's, for the options it could run."""
    if not os.path.exists(results_dir):
        raise AdaptbenchError(f"{results_dir}: no such folder (a sweep's results folder, e.g. results/quickstart)")
    if not os.path.isdir(results_dir):
        raise AdaptbenchError(f"{results_dir} is a file; give a sweep's results folder (it holds runs/ and "
                              f"results.jsonl) or a folder of them")
    if not sweep_dirs(results_dir):
        raise AdaptbenchError(f"{results_dir}: no sweep results here or one level down (a sweep's folder holds "
                              f"runs/ and results.jsonl)")
    results = read_results(results_dir)
    out_dir = out_dir or os.path.join(results_dir, "report")
    try:
        return _write_report(results, results_dir, out_dir, (queries, tolerance, prices))
    except OSError as e:
        raise ResultsWriteError(f"cannot write the report to {out_dir}: {e.strerror or e}") from None


def _write_report(results, results_dir: str, out_dir: str, deciding: tuple) -> Report:
    os.makedirs(out_dir, exist_ok=True)
    df = to_frame(results.records)
    summary = summarize(df) if not df.empty else pd.DataFrame()
    table = display_frame(summary) if not summary.empty else pd.DataFrame()
    report = Report(out_dir, summary, table, problems=list(results.problems), n_records=len(results.records),
                    generations=side_by_side(results.records), judged=judged_runs(results.records))
    failed = [r for r in results.records if r.status != "ok"]
    report.problems += [f"run {r.run_id} {r.status}: {r.reason or ''}" for r in failed]
    curves = cost_curves(results.records)
    if curves:
        curve_table = cost_curve_frame(curves)
        report.cost_curve = display_cost_curve(curve_table)
        spreadsheet_safe(curve_table).to_csv(os.path.join(out_dir, "cost_curve.csv"), index=False)
        report.files.append(os.path.join(out_dir, "cost_curve.csv"))
    found, (queries, tolerance, prices) = decision.decisions(results.records), deciding
    if found:
        table = decision.frame(found, prices)
        report.decision = decision.display(table)
        report.recommendations = decision.lines([decision.recommend(d, queries, tolerance) for d in found],
                                                queries, tolerance)
        spreadsheet_safe(table).to_csv(os.path.join(out_dir, "decision.csv"), index=False)
        report.files.append(os.path.join(out_dir, "decision.csv"))
    served = serving.serving_frame(results.records)
    if not served.empty:
        report.serving, report.serving_ratios = serving.display(served), serving.ratios(served)
        spreadsheet_safe(served).to_csv(os.path.join(out_dir, "serving.csv"), index=False)
        report.files.append(os.path.join(out_dir, "serving.csv"))

    csv_path, md_path = os.path.join(out_dir, "summary.csv"), os.path.join(out_dir, "summary.md")
    spreadsheet_safe(whole_numbers(summary)).to_csv(csv_path, index=False)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown(report, results_dir))
    report.files += [md_path, csv_path]
    figures = []
    if not df.empty and (df["status"] == "ok").any():
        figures += plots.in_vs_out(df, out_dir)
        figures += plots.accuracy_vs_shots(df, out_dir)
        figures += plots.accuracy_vs_cost(df, out_dir)
    figures += plots.learning_curves(results.records, out_dir)
    figures += plots.cost_curve(curves, out_dir)
    figures += decision_plots.figures(found, out_dir)
    figures += niah_heatmaps(results.records, out_dir)
    for _, paths in figures:
        report.files += paths
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(html_page(report, results_dir, figures))
    report.files.append(html_path)
    return report


GENERATIONS_TITLE = "Distilled contexts: generations side by side"
GENERATIONS_NOTE = ("Greedy continuations of held-out inputs by the base model without the context, the teacher "
                    "with it, and the distilled student without it.")
GENERATION_COLUMNS = ("input", "base", "teacher", "student")


def side_by_side(records: list[RunRecord]) -> list[tuple[str, str, list[dict]]]:
    """(run id, what was distilled, generations) of every finished run that recorded generations."""
    out = []
    for rec in records:
        info = rec.method_info
        if rec.status == "ok" and getattr(info, "generations", None):
            about = f"{info.context or ''} context, {info.context_tokens or 0:,} tokens"
            if info.heldout is not None and info.heldout.recovered is not None:
                about += f"; recovered {info.heldout.recovered:.0%} of its effect on held-out inputs"
                if info.heldout.reply is not None and info.heldout.reply.recovered is not None:
                    about += f" ({info.heldout.reply.recovered:.0%} on the teacher's replies)"
            out.append((rec.run_id[:8], about, info.generations))
    return out


def _md_cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|") or " "


COUNTS = ("n", "shots", "trainable_params", "total_params", "train_dropped", "context_tokens", "judged_n")


def whole_numbers(df: pd.DataFrame) -> pd.DataFrame:
    """Counts as integers in the CSV (a mean over runs of one count is a float to pandas: 12.0 params)."""
    out = df.copy()
    for col in out.columns:
        if (col in COUNTS or col.endswith((" unscored", " examples"))) and pd.api.types.is_float_dtype(out[col]):
            values = out[col].dropna()
            if (values == values.round()).all():
                out[col] = out[col].round().astype("Int64")
    return out


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (a model or task name starting with =, +, -,
    @) get a leading apostrophe, as OWASP advises for CSV exports; numbers are left alone."""
    out = df.copy()
    for col in out.columns:
        if not pd.api.types.is_numeric_dtype(out[col]):
            out[col] = out[col].map(lambda v: "'" + v if isinstance(v, str) and v.startswith(FORMULA_START) else v)
    return out


def markdown(report: Report, results_dir: str) -> str:
    lines = [f"# adaptbench report: {results_dir}", "",
             f"{report.n_records} runs; metrics are mean ± std over data seeds (n runs per row); costs are means "
             "per run (adapt s: context encoding, teacher scoring or training; eval s: all eval sets, evaluation "
             "points during training included).", ""]
    if report.recommendations:
        lines += ["## Recommendation", ""] + [f"- {line}" for line in report.recommendations] + [""]
    lines.append(report.table.to_markdown(index=False) if not report.table.empty else "_no finished runs_")
    if _has_unscored(report):
        lines += ["", UNSCORED_NOTE.replace("*", "\\*", 1)]
    if not report.decision.empty:
        lines += ["", f"## {decision.TITLE}", "", decision.NOTE, "", report.decision.to_markdown(index=False)]
    if not report.serving.empty:
        lines += ["", f"## {serving.TITLE}", "", serving.NOTE, "", report.serving.to_markdown(index=False)]
        lines += [""] + [f"- {line}" for line in report.serving_ratios]
    if not report.cost_curve.empty:
        lines += ["", f"## {COST_CURVE_TITLE}", "", COST_CURVE_NOTE, "", report.cost_curve.to_markdown(index=False)]
    if report.generations:
        lines += ["", f"## {GENERATIONS_TITLE}", "", GENERATIONS_NOTE]
        for run_id, about, rows in report.generations:
            lines += ["", f"run {run_id} ({about})", "", "| " + " | ".join(GENERATION_COLUMNS) + " |",
                      "|" + "---|" * len(GENERATION_COLUMNS)]
            lines += ["| " + " | ".join(_md_cell(g.get(c, "")) for c in GENERATION_COLUMNS) + " |" for g in rows]
    if report.judged:
        lines += judged_markdown(report.judged)
    if report.problems:
        lines += ["", "## Not included", ""] + [f"- {p}" for p in report.problems]
    return "\n".join(lines) + "\n"


COST_CURVE_TITLE = "Cost curve: when does distilling pay?"
COST_CURVE_NOTE = (
    "Per context length L (tokens), three ways to answer a query that needs the context: ICL re-encoding it "
    "(icl), ICL with its KV cache (icl_cached) and the distilled student (distilled). One-off s: encoding the "
    "context once (icl_cached), the teacher pass and training (distilled); per query s: one forward pass at "
    "batch size 1 (mean over the timed queries); peak MiB: the process' peak while answering, model weights "
    "included; break-even: the number of queries from which on the row's path costs no more in total than "
    "that ICL path (never: it is dearer per query). Mean over runs at the same L; exact values in cost_curve.csv.")

CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1f2328;padding:0 1rem}h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d0d7de}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}th,td{border:1px solid #d0d7de;padding:.3rem .55rem;
text-align:right}th{background:#f6f8fa}td:nth-child(-n+5){text-align:left}figure{margin:1.5rem 0}
img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.85rem;color:#57606a}
table.gen td{text-align:left;white-space:pre-wrap;vertical-align:top;font-family:ui-monospace,monospace;
max-width:22rem}.problems li{font-family:ui-monospace,monospace;font-size:.8rem}p.meta{color:#57606a;font-size:.85rem}"""


def _img(path: str) -> str:
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'


def _has_unscored(report: Report) -> bool:
    """Whether some mean leaves out examples that did not fit: then the tables say so under them."""
    return "unscored" in report.table.columns


def html_page(report: Report, results_dir: str, figures: list[tuple[str, list[str]]]) -> str:
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = (report.table.to_html(index=False, border=0, escape=True) if not report.table.empty
             else "<p>No finished runs.</p>")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>adaptbench report: {html.escape(results_dir)}</title>", f"<style>{CSS}</style></head><body>",
        f"<h1>adaptbench report</h1><p class=\"meta\">{html.escape(results_dir)}: {report.n_records} runs; "
        f"generated {now}. Metrics: mean ± std over data seeds; costs: means per run.</p>",
    ]
    if report.recommendations:
        parts += ["<h2>Recommendation</h2><ul>"] + [f"<li>{html.escape(x)}</li>" for x in report.recommendations] + [
            "</ul>"]
    parts += ["<h2>Summary</h2>", table]
    if _has_unscored(report):
        parts.append(f'<p class="meta">{html.escape(UNSCORED_NOTE)}</p>')
    if not report.decision.empty:
        parts += [f"<h2>{html.escape(decision.TITLE)}</h2>", f'<p class="meta">{html.escape(decision.NOTE)}</p>',
                  report.decision.to_html(index=False, border=0, escape=True)]
    if not report.serving.empty:
        parts += [f"<h2>{html.escape(serving.TITLE)}</h2>", f'<p class="meta">{html.escape(serving.NOTE)}</p>',
                  report.serving.to_html(index=False, border=0, escape=True), "<ul>"]
        parts += [f"<li>{html.escape(x)}</li>" for x in report.serving_ratios] + ["</ul>"]
    if not report.cost_curve.empty:
        parts += [f"<h2>{html.escape(COST_CURVE_TITLE)}</h2>", f'<p class="meta">{html.escape(COST_CURVE_NOTE)}</p>',
                  report.cost_curve.to_html(index=False, border=0, escape=True)]
    if report.generations:
        parts += [f"<h2>{html.escape(GENERATIONS_TITLE)}</h2>", f'<p class="meta">{html.escape(GENERATIONS_NOTE)}</p>']
        for run_id, about, rows in report.generations:
            parts.append(f'<p class="meta">run {html.escape(run_id)} ({html.escape(about)})</p><table class="gen">'
                         "<tr>" + "".join(f"<th>{c}</th>" for c in GENERATION_COLUMNS) + "</tr>")
            parts += ["<tr>" + "".join(f"<td>{html.escape(str(g.get(c, '')))}</td>" for c in GENERATION_COLUMNS)
                      + "</tr>" for g in rows]
            parts.append("</table>")
    if report.judged:
        parts += judged_html(report.judged)
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, paths in figures:
            png = next(p for p in paths if p.endswith(".png"))
            parts.append(f"<figure>{_img(png)}<figcaption>{html.escape(caption)}</figcaption></figure>")
    if report.problems:
        parts.append('<h2>Not included</h2><ul class="problems">')
        parts += [f"<li>{html.escape(p)}</li>" for p in report.problems]
        parts.append("</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
