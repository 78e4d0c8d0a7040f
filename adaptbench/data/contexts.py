"""Contexts and inputs of every kind for long-context distillation: text files, chats, input sets.

A distillation run needs a *context* C (what the teacher reads and the student never sees) and a set
of *inputs* X (what both read).  ``cd.context`` names the context:

- ``demonstrations``: the data seed's k-shot sample, rendered as in ICL (built elsewhere);
- ``file:PATH``: any UTF-8 text -- a document, a code file -- used as it is;
- ``chat:PATH``: a conversation, JSONL with one ``{"role": ..., "content": ...}`` per line, rendered
  with the tokenizer's chat template where it has one (:func:`render_chat`);
- ``niah``: a needle-in-a-haystack context built for the run, with its questions as inputs
  (:mod:`adaptbench.data.haystack`).

PATH is relative to the config's folder.  Inputs come from ``.jsonl`` files (a ``text`` field per line,
a ``question`` with its gold ``answer`` or a code ``prompt`` with its ``next_line`` -- then the run scores
the answers --, or chat turns whose user turns are the inputs) or ``.txt`` files (one paragraph per input), and are split
into training and held-out inputs by a seeded shuffle (:func:`split_inputs`), so the run can report how
much of the context's effect the student recovered on inputs it never trained on.

Input is validated where it enters: every error names the file and the 1-based line at fault.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..errors import ConfigError, DataError

ROLES = ("system", "user", "assistant")
CONTEXT_FORMS = "'demonstrations', 'file:PATH', 'chat:PATH' or 'niah'"


@dataclass(frozen=True)
class ContextSource:
    """Where a context comes from: ``kind`` is demonstrations, file, chat or niah; ``path`` None but for files."""

    kind: str
    path: str | None = None


def parse_context_setting(setting, config_dir: str) -> ContextSource:
    """Parse ``cd.context``; the path is resolved against the config's folder (absolute paths stay)."""
    if setting in ("demonstrations", "niah"):
        return ContextSource(setting)
    if isinstance(setting, str):
        for kind in ("file", "chat"):
            prefix = f"{kind}:"
            if setting.startswith(prefix):
                rel = setting[len(prefix):]
                if not rel.strip():
                    raise ConfigError(f"cd.context: {setting!r} names no file; use {prefix}PATH")
                return ContextSource(kind, os.path.join(config_dir, rel))
    raise ConfigError(f"cd.context must be {CONTEXT_FORMS}, got {setting!r}")


def read_text_file(path: str, what: str) -> str:
    """The file's text as UTF-8 (a leading BOM dropped, line ends normalised to \\n, as Python's text mode).

    ``what`` says what the file is for (e.g. ``cd.context``) and starts every message, so a user knows
    which setting led here.  Missing, unreadable, non-UTF-8 and empty (or whitespace-only) files are
    DataErrors naming the path; for bad UTF-8 also the line of the first bad byte."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"{what}: cannot read {path}: {e.strerror}") from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{what}: {path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} "
                        f"at offset {e.start})") from None
    if not text.strip():
        raise DataError(f"{what}: {path} is empty")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _jsonl_objects(path: str, what: str):
    """(line number, object) for each non-blank line of a JSONL file; bad JSON or non-objects are DataErrors."""
    for number, line in enumerate(read_text_file(path, what).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path} line {number}: invalid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path} line {number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def _chat_turn(obj: dict, path: str, number: int) -> dict:
    """Check one chat line: exactly the keys role and content, a known role, string content."""
    where = f"{path} line {number}"
    missing = [k for k in ("role", "content") if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key {', '.join(repr(k) for k in missing)} "
                        f"(a chat line is {{\"role\": ..., \"content\": ...}})")
    extra = sorted(set(obj) - {"role", "content"})
    if extra:
        raise DataError(f"{where}: unexpected key {', '.join(repr(k) for k in extra)} (allowed: 'role', 'content')")
    if obj["role"] not in ROLES:
        raise DataError(f"{where}: unknown role {obj['role']!r} (allowed: {', '.join(ROLES)})")
    if not isinstance(obj["content"], str):
        raise DataError(f"{where}: content must be a string, got {type(obj['content']).__name__}")
    return {"role": obj["role"], "content": obj["content"]}


def read_chat(path: str, what: str = "cd.context") -> list[dict]:
    """A conversation from a JSONL chat file: one ``{"role", "content"}`` turn per line, blank lines skipped."""
    return [_chat_turn(obj, path, number) for number, obj in _jsonl_objects(path, what)]


def plain_chat(turns: Sequence[dict]) -> str:
    """The fallback rendering: ``"<Role>: <content>\\n\\n"`` per turn, roles capitalised, nothing else.

    E.g. ``"System: Be brief.\\n\\nUser: Hi\\n\\nAssistant: Hello\\n\\n"``: readable by any base model,
    and the trailing blank line separates the conversation from the input that follows it."""
    return "".join(f"{t['role'].capitalize()}: {t['content']}\n\n" for t in turns)


def render_chat(turns: Sequence[dict], tokenizer, path: str | None = None) -> tuple[str, str]:
    """The conversation as the model would see it, and how it was rendered (``chat_template`` or ``plain``).

    A tokenizer with a chat template renders it (no generation prompt: the inputs follow the context);
    otherwise :func:`plain_chat`.  The second value goes into the run's record.  A template that refuses
    the conversation (many refuse a system turn) is a DataError naming ``path``."""
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat(turns), "plain"
    from jinja2 import TemplateError

    try:
        text = tokenizer.apply_chat_template(list(turns), tokenize=False)
    except TemplateError as e:
        raise DataError(f"{path or 'the conversation'}: the tokenizer's chat template cannot render it: {e}") from None
    return text, "chat_template"


def _text_inputs(path: str) -> list[str]:
    """Inputs of a ``.txt`` file: paragraphs (runs of non-blank lines joined by \\n), blank lines between."""
    paragraphs, current = [], []
    for line in read_text_file(path, "inputs").split("\n"):
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


@dataclass
class InputSet:
    """A run's inputs, and where they have them, gold answers and how those are scored."""

    texts: list[str]
    answers: list[list[str]] | None = None  # per input, one or more gold answers
    kind: str | None = None  # qa (question files, niah) or code (next-line completion): how answers are scored
    chat: bool = False  # user turns of a conversation (rendered as the context's next turn)
    groups: list[dict] | None = None  # per input, e.g. {"depth": 0.5}: answers are also scored per group


#: JSONL input forms: the first line's key -> (the gold answer's key, how answers are scored).
FORMS = {"text": (None, None), "question": ("answer", "qa"), "prompt": ("next_line", "code")}


def _gold_answers(obj: dict, key: str, path: str, number: int) -> list[str]:
    """The gold answers of a line: ``obj[key]`` as one string or a list of strings."""
    if key not in obj:
        raise DataError(f"{path} line {number}: missing key {key!r} (every line of this file is "
                        f"{{{next(k for k, v in FORMS.items() if v[0] == key)!r}: ..., {key!r}: ...}}, "
                        f"{key} a string or a list of strings)")
    gold = obj[key]
    gold = [gold] if isinstance(gold, str) else gold
    if not isinstance(gold, list) or not gold or not all(isinstance(g, str) and g.strip() for g in gold):
        raise DataError(f"{path} line {number}: {key!r} must be a non-empty string or a list of them, "
                        f"got {obj[key]!r}")
    return gold


def _field_text(obj: dict, key: str, path: str, number: int) -> str:
    text = obj.get(key)
    if not isinstance(text, str) or not text.strip():
        problem = f"missing key {key!r}" if key not in obj else f"{key!r} must be a non-empty string, got {text!r}"
        raise DataError(f"{path} line {number}: {problem} (the first line has a {key!r} field, so every line needs one)")
    return text


def _first_line_form(obj: dict, path: str, number: int) -> str:
    """text, question (with answer), prompt (with next_line) or chat: the first line decides for the file."""
    form = next((f for f in FORMS if f in obj), None)
    if form is None and "role" not in obj:
        raise DataError(f"{path} line {number}: expected a 'text' field, a 'question' with its 'answer', a code "
                        f"'prompt' with its 'next_line', or a chat turn {{\"role\": ..., \"content\": ...}}, "
                        f"got keys {sorted(obj)}")
    return form or "chat"


def _jsonl_inputs(path: str) -> InputSet:
    """Inputs of a ``.jsonl`` file: the first line decides -- a ``text`` field per line, a ``question`` with
    its ``answer`` (a string or a list: several gold answers), a code ``prompt`` with its ``next_line``, or
    chat turns (then the user turns are the inputs, the other turns are ignored)."""
    inputs, answers, form = [], [], None
    for number, obj in _jsonl_objects(path, "inputs"):
        form = form or _first_line_form(obj, path, number)
        if form == "chat":
            turn = _chat_turn(obj, path, number)
            if turn["role"] == "user":
                inputs.append(turn["content"])
            continue
        inputs.append(_field_text(obj, form, path, number))
        gold_key, _ = FORMS[form]
        if gold_key:
            answers.append(_gold_answers(obj, gold_key, path, number))
    kind = FORMS.get(form, (None, None))[1]
    return InputSet(inputs, answers if kind else None, kind, chat=form == "chat")


def read_input_set(path: str) -> InputSet:
    """The distillation inputs in file order, from a ``.jsonl`` or ``.txt`` file (see the module doc), with
    their gold answers where the file has them."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".txt"):
        raise DataError(f"inputs: {path}: expected a .jsonl or .txt file, got {ext or 'no extension'!r}")
    found = _jsonl_inputs(path) if ext == ".jsonl" else InputSet(_text_inputs(path))
    if not found.texts:
        raise DataError(f"inputs: {path} holds no inputs (a chat file needs user turns)")
    return found


def read_inputs(path: str) -> list[str]:
    """The distillation inputs in file order (see :func:`read_input_set`)."""
    return read_input_set(path).texts


def _held_out_count(held_out, n: int) -> int:
    """How many inputs ``cd.held_out`` holds out: a fraction (0 < f < 1, rounded) or a count."""
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise ConfigError(f"cd.held_out must be a fraction (0 < f < 1) or a count, got {held_out!r}")
    if isinstance(held_out, float):
        if not 0 < held_out < 1:
            raise ConfigError(f"cd.held_out must be a fraction (0 < f < 1) or a count, got {held_out!r}")
        return round(held_out * n)
    return held_out


def split_inputs(inputs: Sequence, held_out: float | int, seed: int) -> tuple[list[int], list[int], dict]:
    """Seeded shuffle split into training and held-out input indices (each sorted), plus the record's summary.

    Both parts must be non-empty: a student judged on inputs it trained on says nothing about
    generalisation, and one with nothing to train on says nothing at all."""
    n = len(inputs)
    n_held = _held_out_count(held_out, n)
    if not 0 < n_held < n:
        raise ConfigError(f"cd.held_out: {held_out!r} of {n} inputs holds out {n_held} and leaves {n - n_held} "
                          f"for training; both must be at least 1")
    order = np.random.default_rng(seed).permutation(n)
    held = sorted(int(i) for i in order[:n_held])
    train = sorted(int(i) for i in order[n_held:])
    info = {"seed": seed, "held_out": held_out, "n_train": len(train), "n_held_out": len(held),
            "held_out_indices": held}
    return train, held, info


def cut_to_tokens(ids: Sequence[int], length: int) -> list[int]:
    """The context's first ``length`` tokens: one point of the cost curve's context-length axis.

    Asking for more tokens than the context has is an error, never a silently shorter context."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ConfigError(f"context length must be a positive number of tokens, got {length!r}")
    if length > len(ids):
        raise ConfigError(f"context length {length} tokens asked for, but the context has only {len(ids)} tokens")
    return list(ids[:length])
