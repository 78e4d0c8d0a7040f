"""Behaviour checks: what a user declares a reply must (not) do, judged on text.

A distilled persona, style or rule is kept only if the student's replies still behave that way; a KL
share cannot say so.  Each check is one test of a reply:

- ``contains: TEXT`` / ``not_contains: TEXT``: a substring (``ignore_case: true`` to fold case);
- ``regex: PATTERN`` / ``not_regex: PATTERN``: :func:`re.search` finds it / does not (compiled when the
  config loads);
- ``lowercase: true``: no upper-case letter;
- ``max_words: N``: at most N whitespace-separated words;
- ``call: module.function`` (or ``module:function``): any Python predicate ``f(reply: str) -> bool``,
  imported from the Python path or the config's folder.

``name`` labels it in the record and the tables (default: the check written out).
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Callable, Literal

from pydantic import Field, PositiveInt, model_validator

from ..config.settings import Strict
from ..errors import ConfigError, DataError

KINDS = ("contains", "not_contains", "regex", "not_regex", "lowercase", "max_words", "call")


FOLDING = ("contains", "not_contains", "regex", "not_regex")  # kinds that ignore_case applies to


class Check(Strict):
    """One behaviour check (exactly one kind), see the module doc."""

    contains: str | None = Field(None, description="the reply contains this text")
    not_contains: str | None = Field(None, description="the reply does not contain this text")
    regex: str | None = Field(None, description="re.search finds this pattern in the reply")
    not_regex: str | None = Field(None, description="re.search does not find this pattern in the reply")
    lowercase: Literal[True] | None = Field(None, description="true: the reply has no upper-case letter")
    max_words: PositiveInt | None = Field(None, description="the reply has at most this many words")
    call: str | None = Field(None, description="module.function (or module:function): f(reply: str) -> bool")
    ignore_case: bool = Field(False, description="contains / not_contains / regex / not_regex: ignore case")
    name: str | None = Field(None, description="its label in the record and tables (default: the check written out)")

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a check has exactly one of {', '.join(KINDS)}; this one has "
                             f"{', '.join(kinds) if kinds else 'none'}")
        pattern = self.regex if self.regex is not None else self.not_regex
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"{kinds[0]} {pattern!r} does not compile: {e}") from None
        if self.ignore_case and kinds[0] not in FOLDING:
            raise ValueError(f"ignore_case applies to {', '.join(FOLDING)}, not to {kinds[0]}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        value = getattr(self, self.kind)
        return self.kind if value is True else f"{self.kind} {value!r}" if isinstance(value, str) else f"{self.kind} {value}"


def load_call(path: str, config_dir: str | None = None, where: str = "cd.checks") -> Callable[[str], object]:
    """The function a ``call`` check names, imported (the config's folder searched too)."""
    module_name, sep, attr = path.partition(":") if ":" in path else path.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(f"{where}: call {path!r} must be module.function or module:function")
    added = config_dir is not None and config_dir not in sys.path
    if added:
        sys.path.insert(0, config_dir)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # an ImportError, or whatever the user's module raised while importing
        raise ConfigError(f"{where}: call {path!r}: cannot import {module_name!r}: {type(e).__name__}: {e}") from None
    finally:
        if added:
            sys.path.remove(config_dir)
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"{where}: call {path!r}: {module_name!r} has no function {attr!r}")
    return fn


class Judge:
    """The checks, ready to judge replies (``call`` functions imported once)."""

    def __init__(self, checks: list[Check], config_dir: str | None = None):
        self.checks = list(checks)
        self._calls = {i: load_call(c.call, config_dir, f"cd.checks[{i}]") for i, c in enumerate(self.checks) if c.call}
        labels = [c.label for c in self.checks]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"cd.checks: two checks have the label {next(x for x in labels if labels.count(x) > 1)!r}; "
                              f"give one a name")

    def passes(self, i: int, reply: str) -> bool:
        c = self.checks[i]
        fold = (lambda s: s.lower()) if c.ignore_case else (lambda s: s)
        if c.contains is not None:
            return fold(c.contains) in fold(reply)
        if c.not_contains is not None:
            return fold(c.not_contains) not in fold(reply)
        if c.regex is not None or c.not_regex is not None:
            found = re.search(c.regex or c.not_regex, reply, re.IGNORECASE if c.ignore_case else 0) is not None
            return found if c.regex is not None else not found
        if c.lowercase:
            return reply == reply.lower()
        if c.max_words is not None:
            return len(reply.split()) <= c.max_words
        result = self._calls[i](reply)
        if not isinstance(result, bool):
            raise DataError(f"cd.checks[{i}]: call {c.call!r} returned {type(result).__name__}, not a bool")
        return result

    def results(self, reply: str) -> dict[str, bool]:
        """Each check's verdict on one reply, by label."""
        return {c.label: self.passes(i, reply) for i, c in enumerate(self.checks)}
