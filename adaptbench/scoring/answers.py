"""Scores of a free-text answer against gold answers, as SQuAD scores them (Rajpurkar et al., 2016).

Both sides are normalised the way SQuAD's official evaluation script does: lower case, punctuation
removed, the articles *a*, *an*, *the* removed, whitespace collapsed.  Three scores, each the best over
the gold answers:

- ``exact_match``: the normalised answer equals a normalised gold answer;
- ``contains``: a normalised gold answer occurs in the normalised reply, on word boundaries (the lenient
  score long-context QA and needle-in-a-haystack evaluations use: a model may say more than the answer);
- ``f1``: the harmonic mean of token precision and recall between answer and gold (bags of tokens).

A model continues past its answer; the answer scored by exact match and F1 is the reply's first
non-empty line (:func:`answer_line`), ``contains`` reads the whole reply.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
METRICS = ("exact_match", "contains", "f1")


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


def score(reply: str, gold: Sequence[str]) -> dict[str, float]:
    """The three scores of one reply (1.0/0.0 for the binary ones)."""
    line = answer_line(reply)
    return {"exact_match": float(exact_match(line, gold)), "contains": float(contains(reply, gold)),
            "f1": token_f1(line, gold)}
