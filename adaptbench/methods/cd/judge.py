"""Held-out replies judged by what they do: the behaviour checks (``cd.checks``) and, for a question file
(``cd.inputs`` lines ``{"question", "answer"}``), the answers' exact match, contains and token F1.

The base model (without the context), the teacher (with it) and the trained student each write a greedy
reply of ``cd.reply_tokens`` to every held-out input -- the same token budget for all three, cut where it
would leave a model's window -- ending before the first ``cd.reply_stop`` text.  Every share is reported
with its n and a 95 % interval (Wilson for pass rates and exact match, bootstrap for mean F1), and the
replies go into the record side by side with the checks each failed.
"""

from __future__ import annotations

from ...measure.shares import mean, share
from ...scoring.answers import METRICS, SHARES, score
from ...scoring.checks import Judge
from .settings import REPLY_TOKENS, CDSettings

MODELS = ("base", "teacher", "student")
ALL_CHECKS = "all checks"  # a reply that passes every check
GROUPED_BY = ("depth",)  # input groups answers are also scored by (a needle's depth; a code line's number is not)


def _estimate(metric: str, values: list[float]) -> dict:
    """A share with Wilson's interval for a binary score, a mean with a bootstrap interval otherwise."""
    return share([v == 1.0 for v in values]) if metric in SHARES else mean(values)


def cut_reply(text: str, stop: list[str]) -> str:
    """The reply up to the first stop text, stripped."""
    ends = [text.find(s) for s in stop if s and s in text]
    return (text[:min(ends)] if ends else text).strip()


class ReplyJudging:
    """The held-out inputs, their gold answers, and each model's judged replies as they come in."""

    def __init__(self, settings: CDSettings, config_dir: str | None, answers: list[list[str]] | None,
                 plain_chat: bool, kind: str | None = None):
        self.judge = Judge(settings.checks or [], config_dir)
        self.tokens = settings.reply_tokens or REPLY_TOKENS
        self.stop = list(settings.reply_stop) if settings.reply_stop is not None else (
            ["\nUser:"] if plain_chat else [])
        self.answers = answers
        self.kind = kind or "qa"  # how answers are scored: qa or code
        self.groups: list[dict] | None = None  # per held-out input, e.g. {"depth": 0.5}: answers per group too
        self.inputs: list[str] = []
        self.prompts: list[str] | None = None  # the text a model without the context replied to, per input
        self.room: list[int] = []  # each input's reply tokens: reply_tokens, or what the windows leave
        self.replies: dict[str, list[str]] = {}
        self.count_tokens = None  # text -> its tokens: the replies' mean length (what an API would bill)

    @staticmethod
    def wanted(settings: CDSettings, answers: list[list[str]] | None) -> bool:
        return bool(settings.checks) or answers is not None

    def cut(self, text: str) -> str:
        return cut_reply(text, self.stop)

    def add(self, model: str, texts: list[str]) -> None:
        self.replies[model] = [self.cut(t) for t in texts]

    def _checks(self) -> tuple[dict, dict[str, list[dict]]]:
        verdicts = {m: [self.judge.results(r) for r in replies] for m, replies in self.replies.items()}
        labels = [c.label for c in self.judge.checks]
        out = {label: {m: share([v[label] for v in vs]) for m, vs in verdicts.items()} for label in labels}
        out[ALL_CHECKS] = {m: share([all(v.values()) for v in vs]) for m, vs in verdicts.items()}
        return out, verdicts

    def _answers(self) -> tuple[dict, dict[str, list[dict]]]:
        scores = {m: [score(r, g, self.kind) for r, g in zip(replies, self.answers)]
                  for m, replies in self.replies.items()}
        return {metric: {m: _estimate(metric, [s[metric] for s in ss]) for m, ss in scores.items()}
                for metric in METRICS[self.kind]}, scores

    def _by_group(self, scores: dict[str, list[dict]]) -> dict:
        """Answer scores per value of each group key (a needle's depth): a heat map's cells."""
        out: dict = {}
        for key in [k for k in GROUPED_BY if any(k in g for g in self.groups)]:
            for value in sorted({g[key] for g in self.groups if key in g}):
                idx = [i for i, g in enumerate(self.groups) if g.get(key) == value]
                out.setdefault(key, {})[str(value)] = {metric: {m: _estimate(metric, [ss[i][metric] for i in idx])
                                                                for m, ss in scores.items()} for metric in METRICS[self.kind]}
        return out

    def result(self) -> dict:
        """``method_info.judged``: per check (and ``all checks``) and per answer score, each model's share with
        n and interval; the replies side by side."""
        out: dict = {"reply_tokens": self.tokens, "stop": self.stop, "n": len(self.inputs)}
        if self.count_tokens is not None:
            out["reply_tokens_mean"] = {m: sum(map(self.count_tokens, rs)) / max(len(rs), 1)
                                        for m, rs in self.replies.items()}
        rows = [{"input": x, **({"prompt": self.prompts[i]} if self.prompts else {}),
                 **{m: replies[i] for m, replies in self.replies.items()}} for i, x in enumerate(self.inputs)]
        if self.judge.checks:
            out["checks"], verdicts = self._checks()
            for i, row in enumerate(rows):
                row["failed"] = {m: [k for k, ok in vs[i].items() if not ok] for m, vs in verdicts.items()}
        if self.answers is not None:
            out["answer_kind"] = self.kind
            out["answers"], scores = self._answers()
            for i, row in enumerate(rows):
                row["gold"] = self.answers[i]
                row["scores"] = {m: ss[i] for m, ss in scores.items()}
                row.update(self.groups[i] if self.groups else {})
            by_group = self._by_group(scores) if self.groups else {}
            if by_group:
                out["groups"] = by_group
        out["replies"] = rows
        return out
