"""The settings reference and the record schema as Markdown tables, generated from the pydantic classes.

The docs (``docs/reference/settings.md``, ``docs/results.md``) hold a marker where a table goes; the MkDocs
hook ``scripts/mkdocs_hooks.py`` puts these tables there at build time, so the docs name exactly the fields
the code validates and writes -- a field added without a description shows up as an empty cell, and one
removed disappears.
"""

from __future__ import annotations

from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from ..config.blocks import BLOCKS, require_registered
from ..config.schema import ApiRuntime, EvalSetSpec, EvalSpec, PromptSpec, RuntimeOptions, SweepConfig, UserTaskSpec
from ..config.settings import ModelSpec
from ..methods import METHODS
from ..methods.base import MethodInfo
from ..store.record import EvalSetInfo, ModelInfo, Phase, RunRecord, SliceMetrics, Writer


def _type(annotation: Any) -> str:
    """A type as a reader writes it: ``int | None``, ``list[str]``, ``Literal`` values joined by ``|``."""
    return _type_text(annotation).replace("|", "\\|")


def _type_text(annotation: Any) -> str:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0])
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_text(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if isinstance(value, BaseModel) or (isinstance(value, list) and value and isinstance(value[0], BaseModel)):
        return "(its defaults)"
    return "" if value is None else f"`{value!r}`"


def fields_table(model: type[BaseModel], prefix: str = "", only_own: bool = False, skip: tuple = ()) -> str:
    """One row per field: name, type, default, description (``only_own``: the fields the class adds to its
    bases)."""
    inherited = set()
    if only_own:
        for base in model.__mro__[1:]:
            inherited |= set(getattr(base, "model_fields", {}))
    rows = ["| field | type | default | what it is |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in inherited or name in skip:
            continue
        key = field.alias or name
        description = (field.description or "").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")
        rows.append(f"| `{prefix}{key}` | {_type(field.annotation)} | {_default(field)} | {description} |")
    return "\n".join(rows)


def settings_reference() -> str:
    """Every setting a config can hold: the top level, its nested parts and every registered block."""
    require_registered()
    parts = ["## Top level", "", fields_table(SweepConfig, skip=("blocks",)), ""]
    for title, model, prefix in [("model", ModelSpec, "model."), ("prompt", PromptSpec, "prompt."),
                                 ("task (a user task)", UserTaskSpec, "task."), ("eval", EvalSpec, "eval."),
                                 ("eval.sets (one set)", EvalSetSpec, ""), ("runtime", RuntimeOptions, "runtime."),
                                 ("runtime.api", ApiRuntime, "runtime.api.")]:
        parts += [f"## `{title}`", "", fields_table(model, prefix), ""]
    for name in sorted(BLOCKS.names()):
        block = BLOCKS[name]
        parts += [f"## `{name}:`", "", _first_paragraph(block.settings), "", fields_table(block.settings, f"{name}."), ""]
        for field, info in block.settings.model_fields.items():
            for nested in _nested_models(info.annotation):
                kind = nested.model_fields.get("kind")
                title = f"{name}.{field}" + (f" (kind: {kind.annotation.__args__[0]})" if kind is not None else "")
                parts += [f"### `{title}`", "", _first_paragraph(nested), "", fields_table(nested, f"{name}.{field}."), ""]
    return "\n".join(parts)


def _first_paragraph(model: type[BaseModel]) -> str:
    return (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    """The settings classes a field holds (one, a list of them, a choice among them), ModelSpec aside (its own
    section above)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [] if annotation is ModelSpec else [annotation]
    return [m for arg in get_args(annotation) for m in _nested_models(arg)]


def record_reference() -> str:
    """The record's fields, its typed parts, and ``method_info`` per method (each class: the fields it adds)."""
    parts = ["## The record (`result.json`)", "", fields_table(RunRecord), ""]
    for title, model in [("writer", Writer), ("costs.&lt;phase&gt;", Phase),
                         ("metrics.&lt;set&gt;.&lt;slice&gt;", SliceMetrics), ("eval_sets.&lt;set&gt;", EvalSetInfo),
                         ("model", ModelInfo), ("method_info (every method)", MethodInfo)]:
        parts += [f"## `{title}`", "", fields_table(model), ""]
    seen: set[type] = {MethodInfo}
    for name in sorted(METHODS.names()):
        for info in reversed(METHODS[name].info.__mro__):
            if isinstance(info, type) and issubclass(info, MethodInfo) and info not in seen:
                seen.add(info)
                base = info.__mro__[1].__name__
                doc = (info.__doc__ or "").strip() if info.__doc__ != info.__mro__[1].__doc__ else ""
                parts += [f"## `method_info`: {info.__name__}", "", f"{doc} Adds to {base}:".strip(), "",
                          fields_table(info, only_own=True), ""]
    return "\n".join(parts)
