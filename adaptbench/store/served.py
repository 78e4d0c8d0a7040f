"""Does the served student behave as measured?  A distilled run's held-out prompts asked again of an endpoint.

A distillation run with behaviour checks (``cd.checks``) keeps, per held-out input, the prompt the student
replied to (``method_info.judged.replies[i].prompt``, special tokens kept) and its pass rates with 95 %
intervals.  After ``adaptbench export`` and a serving engine (llama.cpp's server, vLLM, ...) the same prompts go
to the endpoint's completions API -- greedy, the record's reply length and stop texts -- and its replies are
judged by the same checks.  A served rate that the recorded interval excludes (and whose own interval excludes
the recorded rate) says the deployment is not the model that was measured (another quantisation, a template
applied twice, a wrong adapter).
"""

from __future__ import annotations

from typing import Any

from ..errors import AdaptbenchError
from ..measure.shares import share
from ..methods.cd.judge import ALL_CHECKS, cut_reply
from ..scoring.checks import Check, Judge
from .finding import find_run


def _judged_record(run: str, results_dir: str):
    found = find_run(run, results_dir)
    if isinstance(found, list):
        raise AdaptbenchError(f"{run} holds {len(found)} runs; name one by its run id")
    record = found[0]
    judged = getattr(record.method_info, "judged", None)
    checks = (record.spec.get("cd") or {}).get("checks")
    if judged is None or not checks or not judged.checks:
        raise AdaptbenchError(f"run {record.run_id[:8]} judged no replies by behaviour checks (cd.checks): nothing "
                              f"to compare a served model with")
    if not all("prompt" in row for row in judged.replies):
        raise AdaptbenchError(f"run {record.run_id[:8]}'s record keeps no held-out prompts (written by an older "
                              f"adaptbench): rerun it to compare a served model with it")
    return record, judged, [Check(**c) for c in checks]


def served_replies(base_url: str, model: str, prompts: list[str], max_tokens: int, stop: list[str],
                   api_key: str = "unused") -> list[str]:
    """Greedy completions of each prompt from an OpenAI-compatible endpoint."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
    try:
        return [client.completions.create(model=model, prompt=p, max_tokens=max_tokens, temperature=0.0,
                                          stop=stop[:4] or None).choices[0].text for p in prompts]
    except openai.OpenAIError as e:
        raise AdaptbenchError(f"{base_url} (model {model!r}): {type(e).__name__}: {e}") from None


def _inside(value: float | None, ci95: list[float] | None) -> bool:
    return value is not None and ci95 is not None and ci95[0] - 1e-9 <= value <= ci95[1] + 1e-9


def check_served(run: str, base_url: str, model: str, results_dir: str = "results",
                 api_key: str = "unused") -> dict[str, Any]:
    """Per check (and 'all checks'): the recorded student's pass rate and interval, the served model's, and whether
    they agree -- neither 95 % interval excludes the other's rate (15/16 recorded, [0.72, 0.99], and 16/16 served,
    [0.81, 1.00], agree); and how many replies came back word for word."""
    record, judged, checks = _judged_record(run, results_dir)
    rows = judged.replies
    texts = served_replies(base_url, model, [r["prompt"] for r in rows], judged.reply_tokens, judged.stop, api_key)
    replies = [cut_reply(t, judged.stop) for t in texts]
    judge = Judge(checks)
    verdicts = [judge.results(r) for r in replies]
    labels = [c.label for c in checks]
    served = {label: share([v[label] for v in verdicts]) for label in labels}
    served[ALL_CHECKS] = share([all(v.values()) for v in verdicts])
    out = {"run_id": record.run_id, "n": len(rows), "same_replies": sum(a == r.get("student") for a, r in
                                                                         zip(replies, rows)), "checks": {}}
    for label, rate in served.items():
        recorded = judged.checks[label]["student"]
        agree = _inside(rate["value"], recorded.ci95) or _inside(recorded.value, rate["ci95"])
        out["checks"][label] = {"recorded": recorded.model_dump(), "served": rate, "within": agree}
    out["replies"] = [{"input": r["input"], "recorded": r.get("student"), "served": s} for r, s in zip(rows, replies)]
    return out
