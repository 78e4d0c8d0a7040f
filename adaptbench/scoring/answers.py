"""Scores of a free-text answer against gold answers: questions as SQuAD scores them (Rajpurkar et al., 2016),
code completions as RepoBench and CrossCodeEval do.

Both sides are normalised the way SQuAD's official evaluation script does: lower case, punctuation
removed, the articles *a*, *an*, *the* removed, whitespace collapsed.  Three scores, each the best over
the gold answers:

- ``exact_match``: the normalised answer equals a normalised gold answer;
- ``contains``: a normalised gold answer occurs in the normalised reply, on word boundaries (the lenient
  score long-context QA and needle-in-a-haystack evaluations use: a model may say more than the answer);
- ``f1``: the harmonic mean of token precision and recall between answer and gold (bags of tokens).

A model continues past its answer; the answer scored by exact match and F1 is the reply's first
non-empty line (:func:`answer_line`), ``contains`` reads the whole reply.

A completed line of code (``kind="code"``) is scored as RepoBench and CrossCodeEval score it: the reply's
first non-empty line and the gold line, whitespace-stripped, by ``exact_match`` and ``edit_similarity``
(rapidfuzz's ``fuzz.ratio`` / 100: one minus the normalised indel distance).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

from rapidfuzz import fuzz

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
METRICS = {"qa": ("exact_match", "contains", "f1"), "code": ("exact_match", "edit_similarity")}
SHARES = ("exact_match", "contains")  # binary per reply (the others are means of per-reply scores)


def normalize(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_line(reply: str) -> str:
    """The reply's first non-empty line: the answer, where a model goes on after it."""
    return next((line for line in reply.split("\n") if line.strip()), "")


def exact_match(answer: str, gold: Sequence[str]) -> bool:
    return any(normalize(answer) == normalize(g) for g in gold)


def contains(reply: str, gold: Sequence[str]) -> bool:
    words = f" {normalize(reply)} "
    return any(normalize(g) and f" {normalize(g)} " in words for g in gold)


def _f1(answer: str, gold: str) -> float:
    a, g = normalize(answer).split(), normalize(gold).split()
    if not a or not g:
        return float(a == g)
    common = sum((Counter(a) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, gold: Sequence[str]) -> float:
    return max(_f1(answer, g) for g in gold)


def score(reply: str, gold: Sequence[str], kind: str = "qa") -> dict[str, float]:
    """The scores of one reply (1.0/0.0 for the binary ones), the best over the gold answers."""
    line = answer_line(reply)
    if kind == "code":
        line = line.strip()
        return {"exact_match": float(any(line == g.strip() for g in gold)),
                "edit_similarity": max(fuzz.ratio(line, g.strip()) for g in gold) / 100}
    return {"exact_match": float(exact_match(line, gold)), "contains": float(contains(reply, gold)),
            "f1": token_f1(line, gold)}
