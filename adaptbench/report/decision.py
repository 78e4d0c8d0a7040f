"""Which way to use a long context: every option a run measured (``cd.arms`` with ``cd.query_costs``), on one
table per context and length, and the cheapest one that keeps the quality asked for.

Options: ``icl`` (the context re-read with every query), ``icl_cached`` (its KV cache kept), ``no_context``
(the model alone), each arm (truncate, rag, kv_compressed) and each distilled student
(``distilled:<trainable>``).  Quality is what the run judged the held-out replies by -- the share passing
every behaviour check, else the answers' primary score (contains for needles, token F1 for a question file,
edit similarity for code) -- or, where nothing judged them, the share of the context's effect kept on the
teacher's replies (1 - KL_option / KL_no_context; ICL keeps all of it).  Costs are the run's measured
seconds and bytes (:mod:`adaptbench.methods.cd.query_costs`); runs at the same length are averaged path by
path, as the cost curve is.  Nothing here is estimated: an option without a measured quality or cost is
shown and never recommended.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from statistics import mean

import pandas as pd

from ..measure.breakeven import DISTILLED, ICL, ICL_CACHED, QUERIES, TOLERANCE, PathCost, break_even, cumulative_seconds
from ..methods.cd.arms import NO_CONTEXT
from ..methods.cd.judge import ALL_CHECKS
from ..store.record import RunRecord
from .aggregate import context_label

JUDGED_AS = {ICL: "teacher", ICL_CACHED: "teacher", NO_CONTEXT: "base"}  # the judged replies each option gave
KEPT = "context effect kept"  # the quality where no reply was judged


@dataclass
class Option:
    """One way to answer the queries, with its measured quality and costs."""

    name: str
    quality: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None
    kl: float | None = None  # KL(teacher || option) on the teacher's replies (else the inputs), nats per position
    cost: PathCost | None = None
    state_bytes: int | None = None  # what stays resident per user: a KV cache, an adapter
    kind: str = ""  # icl, icl_cached, no_context, truncate, rag, kv_compressed or distilled
    prompt_tokens: float | None = None  # tokens a query reads (measured), besides cached ones
    cached_tokens: int = 0  # tokens read from a cache (icl_cached: the context)
    completion_tokens: float | None = None  # the judged replies' mean length

    def total(self, queries: int) -> float:
        return cumulative_seconds(self.cost, queries)


@dataclass
class Decision:
    """The options of one model, context and length, and what the quality is."""

    model: str
    context: str
    length: int
    metric: str
    options: dict[str, Option] = field(default_factory=dict)


def _metric(info) -> tuple[str, str | None, str | None]:
    """(label, block, key) of the quality: a judged share or score, or the context's effect kept."""
    judged = info.judged
    if judged is not None and judged.checks:
        return "all checks pass", "checks", ALL_CHECKS
    if judged is not None and judged.answers:
        key = "contains" if info.context == "niah" else ("f1" if judged.answer_kind == "qa" else "edit_similarity")
        return key, "answers", key
    return KEPT, None, None


def _judged(info, block: str, key: str, model: str) -> tuple | None:
    est = (getattr(info.judged, block) or {}).get(key, {}).get(model)
    if est is None or est.value is None:
        return None
    low, high = est.ci95 or (None, None)
    return est.value, low, high, est.n


def _measure(held) -> tuple[float | None, float | None, float | None]:
    """(KL of the option, KL without the context, the share kept) on the replies where measured."""
    at = held.reply if held is not None and held.reply is not None else held
    return (None, None, None) if at is None else (at.kl_student, at.kl_base, at.recovered)


def _tokens(opt: Option, info, path: str, cost, model: str) -> None:
    """What a query would send to an API model: its prompt (the cached context apart) and its reply."""
    opt.prompt_tokens = cost.tokens_per_query
    if path == ICL_CACHED:
        opt.cached_tokens = info.shared_prefix_tokens or 0
    means = info.judged.reply_tokens_mean if info.judged is not None else None
    opt.completion_tokens = (means or {}).get(model)


def _options(rec: RunRecord, metric: tuple, tag: str | None = None) -> dict[str, Option]:
    """The options one run measured: quality from its judged replies (or KL), cost from its query costs;
    ``tag`` tells its student from another of the same kind."""
    info, (_, block, key) = rec.method_info, metric
    kl_student, kl_base, kept = _measure(info.heldout)
    arms = info.arms or {}
    kls = {ICL: (0.0, 1.0), ICL_CACHED: (0.0, 1.0), NO_CONTEXT: (kl_base, 0.0), DISTILLED: (kl_student, kept)}
    kls.update({name: _measure(arm.heldout)[::2] for name, arm in arms.items()})
    out = {}
    for path, cost in (info.query_costs or {}).items():
        name = f"{DISTILLED}:{rec.spec.get('trainable')}" + (f":{tag}" if tag else "") if path == DISTILLED else path
        kl, share = kls.get(path, (None, None))
        opt = Option(name, kl=kl, cost=PathCost(name, cost.setup_seconds, cost.per_query_seconds,
                                                cost.peak_memory_bytes), state_bytes=cost.state_bytes,
                     kind=arms[path].kind if path in arms else path)
        if path == DISTILLED:
            opt.state_bytes = getattr(info, "trainable_bytes", None)
        model = JUDGED_AS.get(path, "student" if path == DISTILLED else path)
        _tokens(opt, info, path, cost, model)
        judged = _judged(info, block, key, model) if block else (None if share is None else (share, None, None, None))
        if judged is not None:
            opt.quality, opt.low, opt.high, opt.n = judged
        out[name] = opt
    return out


def _averaged(runs: list[dict[str, Option]]) -> dict[str, Option]:
    """Options measured by several runs (the ICL paths, the arms) get their mean costs; students stay apart."""
    merged: dict[str, list[Option]] = defaultdict(list)
    for run in runs:
        for name, opt in run.items():
            merged[name].append(opt)
    out = {}
    for name, opts in merged.items():
        first = opts[0]
        first.cost = PathCost(name, mean(o.cost.setup_seconds for o in opts), mean(o.cost.per_query_seconds for o in opts),
                              int(mean(o.cost.peak_memory_bytes for o in opts)))
        out[name] = first
    return out


def decisions(records: list[RunRecord]) -> list[Decision]:
    """One :class:`Decision` per model, context, length and data seed (held-out queries of their own) among the
    finished runs that measured arms; a student trained twice there (another lr, another seed) is named with
    its run id."""
    groups: dict[tuple, list[RunRecord]] = defaultdict(list)
    for rec in records:
        info = rec.method_info
        if rec.status == "ok" and getattr(info, "arms", None) and getattr(info, "query_costs", None):
            key = (rec.spec["model"]["name"], context_label(info), info.context_tokens, rec.spec.get("data_seed") or 0)
            groups[key].append(rec)
    seeds = {key[:3]: sum(k[:3] == key[:3] for k in groups) for key in groups}
    out = []
    for (model, context, length, seed), recs in sorted(groups.items()):
        metric = _metric(recs[0].method_info)
        trainables = [r.spec.get("trainable") for r in recs]
        runs = [_options(r, metric, r.run_id[:8] if trainables.count(r.spec.get("trainable")) > 1 else None)
                for r in recs]
        label = f"{context} (seed {seed})" if seeds[(model, context, length)] > 1 else context
        out.append(Decision(model, label, length, metric[0], _averaged(runs)))
    return out


@dataclass(frozen=True)
class Prices:
    """What an API model bills per 1,000 tokens; cached prompt tokens cost ``cached_share`` of the prompt price
    (providers' prompt caching: a tenth to a half)."""

    prompt: float
    completion: float = 0.0
    cached_share: float = 0.1


API_KINDS = (ICL, ICL_CACHED, NO_CONTEXT, "truncate", "rag")  # what a model behind an API can do (no weights)


def price(opt: Option, prices: Prices) -> float | None:
    """One query's price through an API model from the tokens measured for the option; None where the option
    needs the model's weights or cache (a student, a pressed cache) or its reply length was not measured."""
    if opt.kind not in API_KINDS or opt.prompt_tokens is None or opt.completion_tokens is None:
        return None
    prompt = opt.prompt_tokens + opt.cached_tokens * prices.cached_share
    return (prompt * prices.prompt + opt.completion_tokens * prices.completion) / 1000


def frame(found: list[Decision], prices: Prices | None = None) -> pd.DataFrame:
    """Every option of every decision, with the break-even query count against every other option
    (``break_even_vs_<option>``: the queries from which on this option costs no more in total; inf: never)
    and, given API prices, one query's price (``api_price_per_query``)."""
    rows = []
    for d in found:
        for opt in d.options.values():
            row = {"model": d.model, "context": d.context, "context_tokens": d.length, "option": opt.name,
                   "quality_metric": d.metric, "quality": opt.quality, "quality_low": opt.low,
                   "quality_high": opt.high, "n": opt.n, "kl_to_teacher": opt.kl,
                   "per_query_seconds": opt.cost.per_query_seconds, "setup_seconds": opt.cost.setup_seconds,
                   "peak_memory_bytes": opt.cost.peak_memory_bytes, "state_bytes": opt.state_bytes,
                   "prompt_tokens": opt.prompt_tokens, "cached_tokens": opt.cached_tokens,
                   "completion_tokens": opt.completion_tokens,
                   "api_price_per_query": price(opt, prices) if prices is not None else None}
            for other in d.options.values():
                if other is not opt:
                    n = break_even(other.cost, opt.cost)
                    row[f"break_even_vs_{other.name}"] = math.inf if n is None else n
            rows.append(row)
    names = list(dict.fromkeys(o.name for d in found for o in d.options.values()))
    columns = ["model", "context", "context_tokens", "option", "quality_metric", "quality", "quality_low", "quality_high",
               "n", "kl_to_teacher", "per_query_seconds", "setup_seconds", "peak_memory_bytes", "state_bytes",
               "prompt_tokens", "cached_tokens", "completion_tokens", "api_price_per_query",
               *(f"break_even_vs_{n}" for n in names)]
    return pd.DataFrame(rows, columns=columns)


def pareto(options: list[Option]) -> list[Option]:
    """The options no other beats on both quality (higher) and per-query seconds (lower), by quality."""
    judged = [o for o in options if o.quality is not None]
    front = [o for o in judged if not any(
        p.quality >= o.quality and p.cost.per_query_seconds <= o.cost.per_query_seconds
        and (p.quality > o.quality or p.cost.per_query_seconds < o.cost.per_query_seconds) for p in judged)]
    return sorted(front, key=lambda o: o.cost.per_query_seconds)


@dataclass
class Recommendation:
    decision: Decision
    choice: Option | None
    reason: str


def _times(a: float, b: float) -> str:
    """``a`` as a multiple or fraction of ``b``, as people say it."""
    if b <= 0 or a <= 0:
        return "the same"
    r = a / b
    return f"1/{1 / r:.0f} the" if r < 0.5 else f"{r:.1f}x the"


def _with_interval(o: Option) -> str:
    return f"{o.quality:.2f}" + (f" [{o.low:.2f}, {o.high:.2f}]" if o.low is not None else "")


def recommend(d: Decision, queries: int = QUERIES, tolerance: float = TOLERANCE) -> Recommendation:
    """The option with the fewest total seconds over ``queries`` queries among those whose quality is at
    least ICL's minus ``tolerance``, and why (what it keeps and saves; what a cheaper one would lose)."""
    icl = d.options.get(ICL)
    if icl is None or icl.quality is None:
        return Recommendation(d, None, "no recommendation: ICL's quality was not measured")
    fine = [o for o in d.options.values() if o.quality is not None and o.quality >= icl.quality - tolerance - 1e-12]
    best = min(fine, key=lambda o: (o.total(queries), o.name))
    reason = (f"{best.name}: {best.quality:.2f} vs ICL {icl.quality:.2f} ({d.metric}) at "
              f"{_times(best.cost.per_query_seconds, icl.cost.per_query_seconds)} per-query time; "
              f"{best.total(queries):.3g} s for {queries:,} queries vs ICL {icl.total(queries):.3g} s")
    cheaper = [o for o in d.options.values() if o.total(queries) < best.total(queries) and o not in fine]
    for o in sorted(cheaper, key=lambda o: o.total(queries))[:2]:
        loses = "its quality was not measured" if o.quality is None else f"loses {icl.quality - o.quality:.2f}"
        reason += f"; {o.name} costs {o.total(queries):.3g} s but {loses}"
    higher = sorted((o for o in fine if o.quality > best.quality + tolerance), key=lambda o: -o.quality)
    for o in higher:
        reason += f"; {o.name} scores higher, {_with_interval(o)} vs {_with_interval(best)}, at {o.total(queries):.3g} s"
    for name in sorted(n for n in d.options if n.startswith(DISTILLED) and n != best.name):
        o, n = d.options[name], break_even(best.cost, d.options[name].cost)
        if o not in cheaper and o not in higher and o.quality is not None:
            pays = "never pays" if n is None else f"pays after {math.ceil(n):,} queries"
            reason += f"; {name} {pays} ({o.quality:.2f})"
    return Recommendation(d, best, reason)


TITLE = "Which option for this context?"
NOTE = ("Every way to answer the run's held-out queries about the context, on the same queries: ICL re-reading the "
        "context (icl) or keeping its KV cache (icl_cached), the model without it (no_context), each arm of cd.arms "
        "(truncate, rag, kv_compressed) and each distilled student. quality: the held-out replies' score [95 % "
        "interval] (n); KL: to the teacher on its replies (nats per token); per query s: median at batch size 1, "
        "the options taking turns; one-off s: encoding, compressing, indexing or distilling (self-study, teacher "
        "pass, training); resident KiB: the state kept per user (a cache from its tensors' shapes, an adapter's "
        "weights); break-even: queries from which on the row costs no more in total than the column (never: it is "
        "dearer per query). Exact values in decision.csv.")


def _quality_cell(row) -> str:
    if pd.isna(row["quality"]):
        return "-"
    if pd.isna(row["quality_low"]):
        return f"{row['quality']:.2f}"
    return f"{row['quality']:.2f} [{row['quality_low']:.2f}, {row['quality_high']:.2f}] ({int(row['n'])})"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The decision table rounded, with readable break-even cells."""
    shown = table[["model", "context", "context_tokens", "option"]].rename(columns={"context_tokens": "L"})
    shown["quality"] = table.apply(_quality_cell, axis=1)
    shown["KL"] = table["kl_to_teacher"].map(lambda v: "-" if pd.isna(v) else f"{v:.3f}")
    shown["per query s"] = table["per_query_seconds"].map(lambda v: f"{v:.3g}")
    shown["one-off s"] = table["setup_seconds"].map(lambda v: f"{v:.3g}")
    shown["peak MiB"] = table["peak_memory_bytes"].map(lambda v: f"{v / 2**20:,.0f}")
    shown["resident KiB"] = table["state_bytes"].map(lambda v: "-" if pd.isna(v) else f"{v / 1024:,.0f}")
    if table["api_price_per_query"].notna().any():
        shown["API price / 1k queries"] = table["api_price_per_query"].map(lambda v: "-" if pd.isna(v) else f"{v * 1000:.3g}")
    for col in [c for c in table.columns if c.startswith("break_even_vs_")]:
        shown[f"vs {col[len('break_even_vs_'):]}"] = table[col].map(
            lambda n: "" if pd.isna(n) else ("never" if math.isinf(n) else f"{math.ceil(n):,}"))
    return shown


def lines(recommendations: list[Recommendation], queries: int, tolerance: float) -> list[str]:
    """The recommendation of each context and length, one line each, as printed and reported."""
    return [f"{r.decision.model}, {r.decision.context}, L={r.decision.length}: for {queries:,} queries within "
            f"{tolerance:.2f} of ICL -- {r.reason}" for r in recommendations]
