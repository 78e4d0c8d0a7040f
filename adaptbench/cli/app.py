"""The ``adaptbench`` command."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..errors import AdaptbenchError
from ..measure.breakeven import QUERIES, TOLERANCE
from .._util.secrets import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Which adaptation method should I use, and what does it cost? "
                       "ICL, context distillation and fine-tuning of decoder LMs, compared on the same samples.")
# Piped into a file or CI log, tables get 160 columns instead of rich's default 80.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True)


def _show_notices() -> None:
    """adaptbench's own notices (errors.Notice) as ``warning: ...`` lines; other warnings as Python shows them."""
    import warnings

    from ..errors import Notice

    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Notice):
            err.print("[bold yellow]warning:[/] ", end="")
            err.print(str(message), markup=False, highlight=False, soft_wrap=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def _fail(e: AdaptbenchError) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(redact(str(e)), markup=False, highlight=False, soft_wrap=True)  # no hard breaks inside paths
    raise typer.Exit(2)


# what the recommendation among a context's options (cd.arms) is made for; run and report take both
Queries = Annotated[int, typer.Option(min=1, help="cd.arms: the queries you expect to answer with the context; the "
                                                  "recommendation is the cheapest option over that many")]
Tolerance = Annotated[float, typer.Option(min=0.0, help="cd.arms: how far below ICL's quality an option may be "
                                                        "(0.05: five points of a share)")]


@app.command()
def run(
    config: Annotated[str, typer.Argument(help="sweep config (YAML)")],
    overrides: Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. shots=[16,32] "
                                                                   "model.dtype=bfloat16 seeds=5")] = None,
    output_dir: Annotated[Optional[str], typer.Option(help="results folder (default: the config's, or results/)")] = None,
    data_dir: Annotated[Optional[str], typer.Option(help="local data folder (<dataset>/<split>.jsonl or a GLUE "
                                                         "download); default $ADAPTBENCH_DATA_DIR, else the hub")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="scoring batch size (default: auto)")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the runs and their ids, run nothing")] = False,
    force: Annotated[bool, typer.Option("--force", help="rerun runs that already have a record")] = False,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="rerun runs recorded as failed")] = False,
    jobs: Annotated[int, typer.Option(min=1, help="worker processes for independent runs (one GPU each, if "
                                                   "several); with --executor local: jobs at a time")] = 1,
    executor: Annotated[Optional[str], typer.Option(help="run each pending run as a submitit job: local or slurm")] = None,
    partition: Annotated[Optional[str], typer.Option(help="slurm: partition")] = None,
    gpus_per_run: Annotated[int, typer.Option(help="slurm: GPUs per job")] = 1,
    time_limit: Annotated[Optional[int], typer.Option(help="slurm/local: minutes per job (default 1440)")] = None,
    array_parallelism: Annotated[Optional[int], typer.Option(help="slurm: jobs of the array running at once")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="slurm: wait for the jobs and print the table")] = False,
    log_with: Annotated[Optional[list[str]], typer.Option(
        "--log-with", help="experiment tracker(s), through accelerate: tensorboard, mlflow, wandb, ... (repeat "
                           "or comma-separate); one tracker run per run, files under <results>/trackers/")] = None,
    keep_checkpoints: Annotated[bool, typer.Option(
        "--keep-checkpoints", help="keep training runs' checkpoints after their records are written")] = False,
    queries: Queries = QUERIES,
    tolerance: Tolerance = TOLERANCE,
) -> None:
    """Run the runs of a sweep config; results go to <output_dir>/<name>/."""
    from .._util import distributed
    from ..sweep.plan import make_plan, pending
    from ..sweep.runner import run_sweep

    distributed.init()  # under accelerate launch / torchrun: join the process group
    _show_notices()
    if not distributed.is_main():  # only rank 0 talks
        out.quiet = err.quiet = True
    try:
        trackers = [t.strip() for item in log_with or [] for t in item.split(",") if t.strip()]
        gpu_jobs = executor == "slurm" and gpus_per_run > 0
        plan = make_plan(config, [*(overrides or []), *(["runtime.keep_checkpoints=true"] * keep_checkpoints)],
                         output_dir, data_dir, batch_size, trackers or None, device="cuda" if gpu_jobs else None)
        todo, done = pending(plan, force, retry_failed)
        if dry_run:
            _print_plan(plan, {r.run_id for r in todo})
            _print_api_plan(plan, todo)
            return
        err.print(f"[bold]{escape(plan.sweep.name)}[/]: {len(plan.runs)} runs, {len(done)} already done, "
                  f"{len(todo)} to run -> {escape(plan.sweep_dir)}")

        options = {"partition": partition, "gpus": gpus_per_run, "time_limit": time_limit,
                   "array_parallelism": array_parallelism, "wait": wait}
        recs = run_sweep(plan, force, retry_failed, _print_run_line, jobs=jobs, executor=executor, executor_options=options)
        if executor == "slurm" and not wait:
            err.print(f"submitted; logs in {plan.sweep_dir}/jobs. Check with `adaptbench report {plan.sweep_dir}`, "
                      "or run the same command again: it submits only runs that are neither done nor in flight",
                      markup=False)
            return
    except AdaptbenchError as e:
        _fail(e)
    _print_results(plan, recs, queries, tolerance)


def _print_run_line(i: int, n: int, rec: dict) -> None:
    from .console import run_line

    err.print(run_line(rec, i, n), highlight=False, soft_wrap=True)


def _print_results(plan, recs: list[dict], queries: int, tolerance: float) -> None:
    """The sweep's table, the recommendation among a context's options (cd.arms), what another writer still
    runs, what failed or was skipped; exit 1 on a failure."""
    from ..report.decision import decisions, lines, recommend
    from ..store.results import read_results
    from .console import problems, run_table

    out.print(run_table(recs, title=f"{plan.sweep.name} ({plan.sweep_dir})", width=out.width))
    found = decisions(read_results(plan.sweep_dir).records) if any(
        (r.get("method_info") or {}).get("arms") for r in recs) else []
    for line in lines([recommend(d, queries, tolerance) for d in found], queries, tolerance):
        out.print(f"recommended: {line}", markup=False, highlight=False, soft_wrap=True)
    if len(recs) < len(plan.runs):
        err.print(f"{len(plan.runs) - len(recs)} runs are being run by another writer on this folder; their records "
                  f"appear there when it finishes them (`adaptbench report {plan.sweep_dir}` collects all)",
                  markup=False, highlight=False, soft_wrap=True)
    for line in problems(recs):
        out.print(line, markup=False, highlight=False, soft_wrap=True)
    if any(r["status"] == "failed" for r in recs):
        raise typer.Exit(1)


def _print_plan(plan, todo_ids: set[str]) -> None:
    from .console import plan_table

    specs = [{"run_id": r.run_id, **r.identity()} for r in plan.runs]
    out.print(plan_table(specs, todo_ids, f"{plan.sweep.name}: {len(plan.runs)} runs"))


def _print_api_plan(plan, todo) -> None:
    """What the pending runs would send to api models (nothing is sent): requests, cache hits, ~tokens, ~cost."""
    from ..sweep.preflight import api_requests

    planned = api_requests(plan, todo)
    if not planned:
        return
    prices = plan.runtime.api
    total_requests = total_tokens = 0
    for run, spec, p in planned:
        if "error" in p:
            err.print(f"{run.run_id[:8]}: {p['error']}", markup=False, highlight=False, soft_wrap=True)
            continue
        tokens = p["approx_prompt_tokens"]  # of the requests not yet cached
        total_requests, total_tokens = total_requests + p["requests"], total_tokens + tokens
        err.print(f"{run.run_id[:8]} {run.method} {spec.name}: "
                  f"{p['requests']} requests ({p['cached']} cached), ~{tokens:,} prompt tokens", markup=False,
                  highlight=False)
    cost = (f", ~{total_tokens / 1000 * prices.price_per_1k_prompt:.2f} for prompt tokens"
            if prices.price_per_1k_prompt is not None else "")
    err.print(f"api: {total_requests} requests and ~{total_tokens:,} prompt tokens to send (estimated at 4 "
              f"characters a token{cost}); nothing was sent", highlight=False)


@app.command()
def report(
    results_dir: Annotated[str, typer.Argument(help="a sweep's results folder (results/<name>) or a folder of them")],
    out_dir: Annotated[Optional[str], typer.Option("--out", help="where to write (default: RESULTS_DIR/report)")] = None,
    queries: Queries = QUERIES,
    tolerance: Tolerance = TOLERANCE,
    price_prompt: Annotated[Optional[float], typer.Option(min=0.0, help="cd.arms: an API model's price per 1,000 "
                                                                        "prompt tokens: the per-query price of the "
                                                                        "options it could run")] = None,
    price_completion: Annotated[float, typer.Option(min=0.0, help="its price per 1,000 completion tokens")] = 0.0,
    cached_share: Annotated[float, typer.Option(min=0.0, max=1.0, help="the share of the prompt price a cached "
                                                                       "prompt token costs")] = 0.1,
) -> None:
    """Tables (Markdown, CSV), plots (PNG, SVG) and one offline HTML page from finished runs."""
    from ..report.decision import Prices
    from ..report.pages import make_report

    prices = None if price_prompt is None else Prices(price_prompt, price_completion, cached_share)
    try:
        rep = make_report(results_dir, out_dir, queries, tolerance, prices)
    except AdaptbenchError as e:
        _fail(e)
    if rep.table.empty:
        err.print(f"no finished runs under {results_dir}", markup=False)
    else:
        table = Table(title=escape(f"{results_dir}: mean ± std over seeds"), header_style="bold", box=None,
                      padding=(0, 1), pad_edge=False)
        for col in rep.table.columns:
            table.add_column(escape(str(col)), no_wrap=True, justify="left" if col in ("model", "task", "method",
                                                                                      "trainable") else "right")
        for row in rep.table.itertuples(index=False):
            table.add_row(*[escape(str(v)) for v in row])
        out.print(table)
    for line in rep.recommendations:
        out.print(f"recommended: {line}", markup=False, highlight=False, soft_wrap=True)
    for line in rep.problems:
        err.print(f"note: {line}", markup=False, highlight=False, soft_wrap=True)
    err.print(f"wrote {len(rep.files)} files to {rep.out_dir} (open {rep.out_dir}/report.html)", markup=False)


@app.command()
def show(
    target: Annotated[str, typer.Argument(help="a run id (or its first 4+ characters), a run folder, or a sweep's "
                                               "results folder")],
    results_dir: Annotated[str, typer.Option(help="where to look for a run id")] = "results",
) -> None:
    """One run: its settings, metrics per eval set and slice, costs per phase, and where its files are."""
    from .show import find_run, render
    from .console import run_table

    try:
        found = find_run(target, results_dir)
    except AdaptbenchError as e:
        _fail(e)
    if isinstance(found, list):  # a folder of several runs: which one?
        out.print(run_table(found, title=f"{target}: {len(found)} runs", width=out.width))
        err.print(f"pass one run id to see it: adaptbench show {found[0].run_id[:8]} --results-dir {target}",
                  markup=False)
        return
    out.print(render(*found))


@app.command()
def export(
    run: Annotated[str, typer.Argument(help="a run id (or its first 4+ characters) or a run folder")],
    to: Annotated[str, typer.Option("--to", help="the folder to write (new or empty)")],
    format: Annotated[str | None, typer.Option("--format", help="peft (LoRA, cartridge; their default), merged "
                                                                 "(a whole transformers folder; the others' default) "
                                                                 "or gguf (for llama.cpp)")] = None,
    results_dir: Annotated[str, typer.Option(help="where to look for a run id")] = "results",
    force: Annotated[bool, typer.Option(help="replace what the folder holds")] = False,
    llama_cpp: Annotated[str | None, typer.Option(help="--format gguf: a llama.cpp checkout (its "
                                                       "convert_hf_to_gguf.py); default: make setup-gguf's")] = None,
) -> None:
    """A run's adapted model as a PEFT adapter, a merged model folder or a GGUF file, with a model card (README.md)."""
    from ..store.export import export as write

    try:
        fmt = write(run, to, format, results_dir, force, llama_cpp)
    except AdaptbenchError as e:
        _fail(e)
    err.print(f"wrote {fmt} to {to} (its README.md says what it is and how to load it)", markup=False)


@app.command("check-served")
def check_served(
    run: Annotated[str, typer.Argument(help="a distillation run with behaviour checks (cd.checks): its run id or folder")],
    base_url: Annotated[str, typer.Option(help="the serving engine's OpenAI-compatible URL, e.g. "
                                               "http://127.0.0.1:8000/v1")],
    model: Annotated[str, typer.Option(help="the model name the endpoint serves the exported student as")],
    results_dir: Annotated[str, typer.Option(help="where to look for a run id")] = "results",
) -> None:
    """Ask a served student the run's held-out prompts (greedy, its reply length and stops) and judge its replies
    by the run's checks: each pass rate against the recorded one (neither 95 % interval excluding the other's rate).
    Exit 1 when one disagrees."""
    import os

    from ..store.served import check_served as compare

    try:
        result = compare(run, base_url, model, results_dir, os.environ.get("OPENAI_API_KEY") or "unused")
    except AdaptbenchError as e:
        _fail(e)
    table = Table(title=f"run {result['run_id'][:8]} served at {base_url}: {result['same_replies']} of "
                        f"{result['n']} replies word for word as recorded", header_style="bold")
    for col in ("check", "recorded (95 % CI)", "served (95 % CI)", "agree"):
        table.add_column(col)
    for label, row in result["checks"].items():
        rec, got = row["recorded"], row["served"]
        table.add_row(label, f"{rec['k']}/{rec['n']} [{rec['ci95'][0]:.2f}, {rec['ci95'][1]:.2f}]",
                      f"{got['k']}/{got['n']} [{got['ci95'][0]:.2f}, {got['ci95'][1]:.2f}]",
                      "yes" if row["within"] else "NO")
    out.print(table)
    if not all(row["within"] for row in result["checks"].values()):
        raise typer.Exit(1)


@app.command()
def tasks() -> None:
    """List the built-in tasks and evaluation sets."""
    from ..data import EVAL_SETS, TASKS

    table = Table(title="tasks", header_style="bold")
    for col in ("task", "labels (id order)", "metrics", "default OOD sets", "about"):
        table.add_column(col, overflow="fold")
    for t in TASKS.values():
        table.add_row(t.name, ", ".join(t.labels.names), ", ".join(t.metrics), ", ".join(t.ood), t.description)
    out.print(table)
    table = Table(title="eval sets (plus 'validation': the task's own)", header_style="bold")
    for col in ("eval set", "labels (id order)", "metrics", "default rows", "sliced by", "about"):
        table.add_column(col, overflow="fold")
    for e in EVAL_SETS.values():
        where = ", ".join(f"{k} in {list(v)}" for k, v in e.default_filter) or "all"
        table.add_row(e.name, ", ".join(e.labels.names), ", ".join(e.metrics), where,
                      ", ".join(("label", *e.slice_by)), e.description)
    out.print(table)


@app.command()
def methods() -> None:
    """List the adaptation methods."""
    from ..methods import METHODS

    table = Table(title="methods", header_style="bold")
    table.add_column("method")
    table.add_column("trainable (policies)")
    table.add_column("about")
    for m in METHODS.values():
        table.add_row(m.name, ", ".join(m.trainable) if m.trains else "-- (no training)", m.description)
    out.print(table)


@app.command()
def models() -> None:
    """List the model aliases (any hub id, folder or .gguf file works too)."""
    from ..models.loading import ALIASES

    table = Table(title="model aliases", header_style="bold")
    table.add_column("alias")
    table.add_column("resolves to")
    for name, target in ALIASES.items():
        table.add_row(name, target if isinstance(target, str) else f"{target[2]} in PyPI package {target[1]}")
    out.print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
