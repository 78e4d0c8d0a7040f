"""Config errors as a user reads them: the setting at fault (as the user wrote it -- without pydantic's
union tags), what is wrong, the value given, and the override it came from.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ValidationError

from .blocks import BLOCKS
from .schema import _BY_NAME, _INLINE


def _allowed(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'unknown field' messages (a model that carries
    settings blocks lists the registered blocks' names instead of its ``blocks`` field)."""
    if not loc and "blocks" in model_cls.model_fields:
        return sorted({*model_cls.model_fields, *BLOCKS} - {"blocks"})
    cls = model_cls
    for part in loc:
        if isinstance(part, int) or cls is None:
            continue
        field = cls.model_fields.get(part)
        if field is None:
            return []
        cls = _model_in(field.annotation)
    return sorted(cls.model_fields) if cls is not None else []


def _model_in(annotation) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():  # list[X], X | None, Annotated[X, ...]
        found = _model_in(arg)
        if found is not None:
            return found
    origin = getattr(annotation, "__origin__", None)  # Annotated[X, ...] keeps X in __origin__
    return _model_in(origin) if origin is not None and origin is not annotation else None


# Locations of union members in pydantic's errors ("constrained-int", "literal['auto']", "function-after[...]",
# a model's class name): how pydantic tells the members apart, never a setting's name.
_UNION_TAG = re.compile(r"^(?:constrained-\w+|[a-z-]+\[.*\]|str|int|float|bool|none|[A-Z]\w*)$")


def _where(loc: tuple) -> str:
    parts = [p for p in loc if p not in (_BY_NAME, _INLINE) and not (isinstance(p, str) and _UNION_TAG.match(p))]
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".") or "(top level)"


def _message(err: dict, model_cls: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        loc = tuple(p for p in err["loc"] if p not in (_BY_NAME, _INLINE))
        allowed = _allowed(model_cls, loc[:-1])
        return "unknown field" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if err["type"] == "missing":
        return "required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, str) and "," in value and err["type"] in ("int_type", "float_type", "list_type"):
        msg += f" -- for a list, write [{value}]"
    return msg


def format_errors(e: ValidationError, source: str, model_cls: type[BaseModel], overrides: dict | None = None,
                  at: tuple = ()) -> str:
    """One line per setting at fault: where (without pydantic's union tags), what is wrong, the value given;
    a setting given on the command line is named as the override it came from.  ``at``: where ``model_cls``
    sits in the config (a settings block: ``("cd",)``)."""
    lines, by_where = [f"{source}: invalid config"], {}
    for err in e.errors():
        where = _where(at + tuple(err["loc"]))
        msgs = by_where.setdefault(where, [[], err.get("input")])[0]
        if (msg := _message(err, model_cls)) not in msgs:
            msgs.append(msg)
    for where, (msgs, value) in by_where.items():
        given = "" if "required field is missing" in msgs or "unknown field" in msgs[0] or isinstance(
            value, (dict, list)) else f" (got {value!r})"
        setting = re.sub(r"\[\d+\]", "", where)  # model[0].dtype is the setting model.dtype
        origin = next((f" (from the override {typed})" for k, typed in (overrides or {}).items()
                       if setting == k or setting.startswith(f"{k}.") or where.startswith(f"{k}[")), "")
        lines.append(f"  - {where}: {'; or '.join(msgs)}{given}{origin}")
    return "\n".join(lines)
