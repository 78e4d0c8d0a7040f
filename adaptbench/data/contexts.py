"""Contexts and inputs of every kind for long-context distillation: text files, chats, input sets.

A distillation run needs a *context* C (what the teacher reads and the student never sees) and a set
of *inputs* X (what both read).  ``cd.context`` names the context:

- ``demonstrations``: the data seed's k-shot sample, rendered as in ICL (built elsewhere);
- ``file:PATH``: any UTF-8 text -- a document, a code file -- used as it is;
- ``chat:PATH``: a conversation, JSONL with one ``{"role": ..., "content": ...}`` per line, rendered
  with the tokenizer's chat template where it has one (:func:`render_chat`).

PATH is relative to the config's folder.  Inputs come from ``.jsonl`` files (a ``text`` field per line,
a ``question`` with its gold ``answer`` -- then the run scores the answers --, or chat turns whose user
turns are the inputs) or ``.txt`` files (one paragraph per input), and are split
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
CONTEXT_FORMS = "'demonstrations', 'file:PATH' or 'chat:PATH'"


@dataclass(frozen=True)
class ContextSource:
    """Where a context comes from: ``kind`` is demonstrations, file or chat; ``path`` None for demonstrations."""

    kind: str
    path: str | None = None


def parse_context_setting(setting, config_dir: str) -> ContextSource:
    """Parse ``cd.context``; the path is resolved against the config's folder (absolute paths stay)."""
    if setting == "demonstrations":
        return ContextSource("demonstrations")
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


def _gold_answers(obj: dict, path: str, number: int) -> list[str]:
    """The gold answers of a question line: ``answer`` as one string or a list of strings."""
    if "answer" not in obj:
        raise DataError(f"{path} line {number}: missing key 'answer' (a question line is "
                        f"{{\"question\": ..., \"answer\": ...}}, answer a string or a list of strings)")
    gold = obj["answer"]
    gold = [gold] if isinstance(gold, str) else gold
    if not isinstance(gold, list) or not gold or not all(isinstance(g, str) and g.strip() for g in gold):
        raise DataError(f"{path} line {number}: 'answer' must be a non-empty string or a list of them, "
                        f"got {obj['answer']!r}")
    return gold


def _field_text(obj: dict, key: str, path: str, number: int) -> str:
    text = obj.get(key)
    if not isinstance(text, str) or not text.strip():
        problem = f"missing key {key!r}" if key not in obj else f"{key!r} must be a non-empty string, got {text!r}"
        raise DataError(f"{path} line {number}: {problem} (the first line has a {key!r} field, so every line needs one)")
    return text


def _first_line_form(obj: dict, path: str, number: int) -> str:
    """text, question (with answer) or chat: the first line decides for the whole file."""
    for form in ("text", "question"):
        if form in obj:
            return form
    if "role" not in obj:
        raise DataError(f"{path} line {number}: expected a 'text' field, a 'question' with its 'answer', or a chat "
                        f"turn {{\"role\": ..., \"content\": ...}}, got keys {sorted(obj)}")
    return "chat"


def _jsonl_inputs(path: str) -> tuple[list[str], list[list[str]] | None]:
    """Inputs of a ``.jsonl`` file, and gold answers for a question file: the first line decides -- a ``text``
    field per line, a ``question`` with its ``answer`` (a string or a list: several gold answers), or chat
    turns (then the user turns are the inputs, the other turns are ignored)."""
    inputs, answers, form = [], [], None
    for number, obj in _jsonl_objects(path, "inputs"):
        form = form or _first_line_form(obj, path, number)
        if form == "chat":
            turn = _chat_turn(obj, path, number)
            if turn["role"] == "user":
                inputs.append(turn["content"])
            continue
        inputs.append(_field_text(obj, form, path, number))
        if form == "question":
            answers.append(_gold_answers(obj, path, number))
    return inputs, (answers if form == "question" else None)


def read_inputs_and_answers(path: str) -> tuple[list[str], list[list[str]] | None]:
    """The distillation inputs in file order, from a ``.jsonl`` or ``.txt`` file (see the module doc), and
    for a question file each question's gold answers (None for other files)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".jsonl", ".txt"):
        raise DataError(f"inputs: {path}: expected a .jsonl or .txt file, got {ext or 'no extension'!r}")
    inputs, answers = _jsonl_inputs(path) if ext == ".jsonl" else (_text_inputs(path), None)
    if not inputs:
        raise DataError(f"inputs: {path} holds no inputs (a chat file needs user turns)")
    return inputs, answers


def read_inputs(path: str) -> list[str]:
    """The distillation inputs in file order (see :func:`read_inputs_and_answers`)."""
    return read_inputs_and_answers(path)[0]


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
