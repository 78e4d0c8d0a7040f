"""Reading a sweep file: YAML as YAML 1.2 reads it (true/false the only booleans, 1e-5 a number, a key given
twice an error), and ``key=value`` overrides from the command line (dotted keys, YAML values).
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml

from ..errors import ConfigError, not_utf8


class _Loader(yaml.SafeLoader):
    """YAML with the booleans and numbers of YAML 1.2: true/false only (YAML 1.1 also reads yes/no/on/off as
    booleans, which silently turns a label or verbalizer key named ``no`` into ``False``), and ``1e-5`` is a
    number (YAML 1.1 wants ``1.0e-5``).  A key given twice in one mapping is an error naming both lines:
    YAML keeps the last one silently, and a second ``train:`` block would discard the first."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice in one mapping (line {seen[key] + 1} and line "
                                    f"{key_node.start_mark.line + 1}); YAML would keep the second silently -- "
                                    f"merge them or remove one", key_node.start_mark)
                seen.setdefault(key, key_node.start_mark.line)
        return super().construct_mapping(node, deep=deep)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:float",
                                                             "tag:yaml.org,2002:int")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(  # integers without YAML 1.1's base-60 (1:30 is text, not 90)
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|0x[0-9a-fA-F_]+|0o[0-7_]+)$"),
    list("-+0123456789"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_Loader.add_implicit_resolver(  # YAML 1.2 core schema floats: 1e-5, 1.0e-5, .5, -2.5E+3, .inf, .nan
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+\.[0-9]*)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"), list("-+0123456789."))


def yaml_load(text):
    return yaml.load(text, Loader=_Loader)


MODEL_RUN_SETTINGS = ("dtype", "device")  # what model=X on the command line keeps of the file's model


ALIASES = {"seeds": "data_seeds", "models": "model", "tasks": "task", "methods": "method"}


def _set_dotted(cfg: dict, key: str, value: Any, source: str) -> None:
    parts = key.split(".")
    parts[0] = ALIASES.get(parts[0], parts[0])
    node = cfg
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if isinstance(child, str) and part == "model":  # model=name then model.dtype=...
            child = node[part] = {"name": child}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: cannot set {key!r}: {part!r} is not a mapping")
        node = child
    last = parts[-1]
    if last == "model" and isinstance(node.get("model"), dict) and isinstance(value, str):
        # another model keeps how the file runs models (dtype, device), nothing of the old model's own:
        # not its GGUF file, tokenizer or revision, and never its trust_remote_code
        node["model"] = {**{k: v for k, v in node["model"].items() if k in MODEL_RUN_SETTINGS}, "name": value}
    else:
        node[last] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. shots=[16,32])")
        try:
            value = yaml_load(text) if text else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        out.append((key.strip(), value))
    return out


class RawConfig(dict):
    """A config as read, overrides applied; ``overrides`` maps each overridden setting (its dotted name, aliases
    resolved) to the override as typed, so that an error in it names the override, not the file."""

    overrides: dict[str, str]


def load_raw(path: str, overrides: list[str] = ()) -> dict:
    """The YAML file as a dict with ``key=value`` overrides applied."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml_load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(not_utf8(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty config")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of settings, got {type(raw).__name__}")
    raw = RawConfig(raw)
    raw.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    raw.overrides = {}
    for item, (key, value) in zip(overrides, parse_overrides(list(overrides))):
        _set_dotted(raw, key, value, path)
        parts = key.split(".")
        raw.overrides[".".join([ALIASES.get(parts[0], parts[0]), *parts[1:]])] = item
    return raw
