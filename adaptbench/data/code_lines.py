"""Next-line completion points from a source file, as RepoBench (Liu et al., 2023) and CrossCodeEval (Ding et
al., 2023) pose them: the lines before a line are the prompt, the line itself (whitespace-stripped) the gold.

``cd.inputs: code:PATH`` takes every ``EVERY``-th line of PATH that has at least ``MIN_CHARS`` non-blank
characters and is not a comment, with the ``PROMPT_LINES`` lines before it (ending in a newline) as the
input.  With a source file as ``cd.context`` (another module of the same code base, say), the teacher
completes each line having read that file; the student without it.  For other points, write a JSONL file of
``{"prompt": ..., "next_line": ...}``.
"""

from __future__ import annotations

from ..errors import DataError
from .contexts import InputSet, read_text_file

PROMPT_LINES = 10  # lines of the file before the completed line
EVERY = 3  # every third eligible line
MIN_CHARS = 8  # a line shorter than this (a bracket, `else:`) says little about a model


def completion_points(path: str, prompt_lines: int = PROMPT_LINES, every: int = EVERY) -> InputSet:
    lines = read_text_file(path, "cd.inputs").split("\n")
    eligible = [i for i in range(1, len(lines))
                if len(lines[i].strip()) >= MIN_CHARS and not lines[i].lstrip().startswith("#")]
    picked = eligible[::every]
    if len(picked) < 2:
        raise DataError(f"cd.inputs: code:{path} gives {len(picked)} completion points (lines of at least "
                        f"{MIN_CHARS} characters, every {every}th); a longer file is needed")
    texts = ["\n".join(lines[max(0, i - prompt_lines):i]) + "\n" for i in picked]
    return InputSet(texts, [[lines[i].strip()] for i in picked], "code", groups=[{"line": i + 1} for i in picked])
