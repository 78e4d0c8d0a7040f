"""Configs: a sweep file (YAML) with command-line overrides, validated, expanded into runs.

A sweep lists its axes -- model, task, method, shots, data seeds, train seeds, prompt -- each a value
or a list; any other setting can be varied with ``grid:`` (``{"icl.prefix_cache": [true, false]}``).
The cartesian product gives the runs.  A :class:`RunSpec` holds everything that determines a run's
result; its hash is the run id.  How the run is executed (batch size, data folder) lives in
:class:`RuntimeOptions` and does not change the id.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import os
import re
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, Discriminator, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      Tag, ValidationError, field_validator, model_validator)

from ..errors import ConfigError, not_utf8
from .settings import SWEEP_PRESETS, BitfitSettings, CDSettings, ICLSettings, LoraSettings, ModelSpec, PBFTSettings, Strict, TrainSettings, VanillaSettings

# Bump when the meaning of a spec field changes, so old run ids are not reused.
# 2: prompts tokenised as one text; pbft/vanilla settings blocks; float32 master weights in training.
SPEC_VERSION = 2


def label_name(value) -> str:
    """A label value as a task names it: booleans as YAML and JSON spell them (``true``), others as text."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value).strip()


class PromptSpec(Strict):
    preset: str = Field("minimal", description="minimal, gpt-3 or eval-harness (per task family)")
    pattern: str | None = Field(None, description="e.g. '{text1} question: {text2} Yes or No?'")
    target_prefix: str | None = Field(None, description="text between pattern and answer, e.g. ' answer:'")
    separator: str | None = Field(None, description="between demonstrations")
    verbalizer: list[str] | dict[str, str] | None = Field(
        None, description="one single-token word per label (list in label order, or label -> word; a label "
                          "written as a number or boolean is its name)")
    instruction: str = Field("", description="text before the demonstrations")

    @field_validator("verbalizer", mode="before")
    @classmethod
    def _label_keys(cls, v):
        """``{0: " No", 1: " Yes"}``: YAML reads the keys as numbers; they name labels, as text."""
        if isinstance(v, dict):
            return {label_name(k) if isinstance(k, (bool, int, float)) else k: w for k, w in v.items()}
        return v


class UserTaskSpec(Strict):
    """A task from your own files (CSV, TSV, JSONL, Parquet or Arrow; paths relative to the config file),
    or from a hub dataset (``hub``: train, validation and ood values are then split names)."""

    name: str
    train: str = Field(description="file of the training pool, or its split name with hub")
    validation: str = Field(description="file of the in-domain eval set, or its split name with hub")
    text_fields: list[str] = Field(min_length=1, max_length=2)
    label_field: str = "label"
    labels: list[bool | int | str] = Field(min_length=2, description="label values in label-id order, as they are "
                                                                    "in the data (strings, numbers or booleans; "
                                                                    "for a hub class-label column: its names or "
                                                                    "integer codes)")
    ood: dict[str, str] = Field(default_factory=dict, description="name -> file (or hub split) of extra eval sets")
    hub: str | None = Field(None, description="a hub dataset id (org/name) or a local dataset folder, loaded "
                                              "with datasets.load_dataset")
    config: str | None = Field(None, description="hub: the dataset's configuration (subset) name")
    revision: str | None = Field(None, description="hub: a branch, tag or commit of the dataset")


# Tags of the "name or inline spec" unions; they show up in error locations and are dropped there.
_BY_NAME, _INLINE = "<by-name>", "<inline>"


def _is_str(v: Any) -> str:
    return _BY_NAME if isinstance(v, str) else _INLINE


TaskRef = Annotated[Annotated[str, Tag(_BY_NAME)] | Annotated[UserTaskSpec, Tag(_INLINE)], Discriminator(_is_str)]


class EvalSetSpec(Strict):
    name: str
    where: dict[str, str | list[str]] | None = Field(
        None, description="keep rows whose field has one of these values (HANS: {heuristic: [...]}); "
                          "{} keeps all rows; unset: the set's default")
    max_examples: PositiveInt | None = None


EvalSetRef = Annotated[Annotated[str, Tag(_BY_NAME)] | Annotated[EvalSetSpec, Tag(_INLINE)],
                      Discriminator(_is_str)]


class EvalSpec(Strict):
    sets: Literal["default"] | list[EvalSetRef] = Field(
        "default", description="default: the in-domain validation split and the task's OOD sets")
    max_examples: PositiveInt | None = Field(None, description="per eval set, stratified by label")
    seed: int = Field(0, description="seed of the eval subsample (fixed across runs, so they compare)")


class ApiRuntime(Strict):
    """How requests to api models go out (model.api); not part of a run's identity."""

    concurrency: PositiveInt = Field(4, description="requests in flight at once")
    max_retries: NonNegativeInt = Field(5, description="retries (exponential backoff) on 408/409/429/5xx and "
                                                       "timeouts")
    timeout_s: PositiveFloat = Field(60.0, description="seconds per request")
    price_per_1k_prompt: NonNegativeFloat | None = Field(None, description="for the record's cost: price per "
                                                                           "1,000 prompt tokens")
    price_per_1k_completion: NonNegativeFloat | None = Field(None, description="price per 1,000 completion "
                                                                               "tokens")
    cache_dir: str | None = Field(None, description="responses on disk, keyed by request (default "
                                                    "~/.cache/adaptbench/api): a rerun never pays twice")


class RuntimeOptions(Strict):
    """How runs execute; not part of a run's identity."""

    batch_size: PositiveInt | Literal["auto"] = Field("auto", description="eval/scoring batch size")
    data_dir: str | None = Field(None, description="local data folder (else ADAPTBENCH_DATA_DIR, else hub)")
    data_source: Literal["auto", "local", "original", "hub"] = "auto"
    progress: bool = True
    log_with: list[str] = Field(default_factory=list, description="experiment trackers (accelerate's): "
                                                                 "tensorboard, mlflow, wandb, ...")
    api: ApiRuntime = ApiRuntime()


class RunSpec(Strict):
    """One cell of the grid.  Everything here can change the result; its hash is the run id."""

    model: ModelSpec
    task: TaskRef
    method: str
    shots: NonNegativeInt
    data_seed: int
    train_seed: int = 0
    balanced: bool = True
    prompt: PromptSpec = PromptSpec()
    eval: EvalSpec = EvalSpec()
    trainable: Literal["full", "head", "bitfit", "lora"] | None = None
    train: TrainSettings | None = None
    lora: LoraSettings | None = None
    bitfit: BitfitSettings | None = None
    icl: ICLSettings | None = None
    cd: CDSettings | None = None
    pbft: PBFTSettings | None = None
    vanilla: VanillaSettings | None = None
    resolved: dict[str, Any] | None = Field(None, description="set by the planner, not in configs: the dtype "
                                            "'auto' resolves to and content hashes of local files (fingerprint.py)")

    @property
    def task_name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.name

    def identity(self) -> dict:
        return {"spec_version": SPEC_VERSION, **self.model_dump(mode="json", exclude_none=True)}

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _listify(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def _seed_list(v: Any) -> Any:
    """``data_seeds: 10`` means seeds 0..9; a list is taken as is."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError("a seed count must be >= 1 (write a list, e.g. [7], for one specific seed)")
        return list(range(v))
    return v


class SweepConfig(Strict):
    preset: Literal["reference", "adaptbench"] | None = Field(
        None, description="reference: the reference study's choices for every setting left unset (train preset, "
                          "pbft.loss: vocab, vanilla.head: mlp, minimal prompt); adaptbench: adaptbench's defaults")
    name: str = Field(pattern=r"^[A-Za-z0-9._-]+$",
                      description="results go to <output_dir>/<name>/ (letters, digits, . _ -; not . or ..)")
    output_dir: str = "results"
    model: list[ModelSpec] = Field(min_length=1)
    task: list[TaskRef] = Field(min_length=1)
    method: list[str] = Field(min_length=1)
    shots: list[NonNegativeInt] = Field(min_length=1)
    data_seeds: list[NonNegativeInt] = Field([0], min_length=1, description="N (= seeds 0..N-1) or a list")
    train_seeds: list[NonNegativeInt] = Field([0], min_length=1, description="N (= seeds 0..N-1) or a list")
    balanced: bool = Field(True, description="few-shot samples balanced across labels")
    prompt: list[PromptSpec] = Field([PromptSpec()], min_length=1)
    eval: EvalSpec = EvalSpec()
    trainable: list[Literal["full", "head", "bitfit", "lora"]] = Field(
        ["full"], min_length=1, description="which parameters fine-tuning methods train")
    train: TrainSettings = TrainSettings()
    lora: LoraSettings = LoraSettings()
    bitfit: BitfitSettings = BitfitSettings()
    icl: ICLSettings = ICLSettings()
    cd: CDSettings = CDSettings()
    pbft: PBFTSettings = PBFTSettings()
    vanilla: VanillaSettings = VanillaSettings()
    grid: dict[str, list[Any]] = Field(default_factory=dict,
                                       description="dotted setting -> list of values to sweep over")
    runtime: RuntimeOptions = RuntimeOptions()

    @field_validator("name")
    @classmethod
    def _not_a_dot_folder(cls, value: str) -> str:
        if value in (".", ".."):
            raise ValueError(f"{value!r} would put the results in the output folder itself or above it; "
                             f"choose a name")
        return value

    @field_validator("model", mode="before")
    @classmethod
    def _models(cls, v):
        return [{"name": m} if isinstance(m, str) else m for m in _listify(v)]

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompts(cls, v):
        return [{"preset": p} if isinstance(p, str) else p for p in _listify(v)]

    @field_validator("task", "method", "shots", "trainable", mode="before")
    @classmethod
    def _lists(cls, v):
        return _listify(v)

    @field_validator("data_seeds", "train_seeds", mode="before")
    @classmethod
    def _seeds(cls, v):
        return _seed_list(v)

    @model_validator(mode="after")
    def _known_methods(self):
        from ..methods import METHODS

        for m in self.method:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; methods: {', '.join(METHODS)}")
        return self


def expand(raw: dict, source: str = "<config>") -> tuple[SweepConfig, list[RunSpec]]:
    """Validate a raw config and expand it into run specs (order: as listed, seeds innermost).

    ``include:`` lists blocks that each override the top-level settings and expand on their own (e.g.
    ``{method: pbft, trainable: [full, lora]}`` and ``{method: vanilla, trainable: full}``); the runs of
    all blocks together form the sweep.  Without it the top level is the one block.
    """
    includes = raw.get("include")
    if includes is None:
        blocks = [raw]
    elif not isinstance(includes, list) or not includes or not all(isinstance(b, dict) for b in includes):
        raise ConfigError(f"{source}: include must be a non-empty list of mappings of settings")
    else:
        base = {k: v for k, v in raw.items() if k != "include"}
        blocks = [_merge(base, block) for block in includes]
    sweep, runs = None, []
    overrides = getattr(raw, "overrides", {})
    for i, block in enumerate(blocks):
        where = f"{source} (include[{i}])" if includes is not None else source
        block = _with_preset(block, where)
        for variant in _grid_variants(block, where):
            sweep_i = _validate(SweepConfig, variant, where, overrides)
            sweep = sweep or sweep_i
            runs += _cells(sweep_i, where)
    seen: dict[str, RunSpec] = {}
    for r in runs:
        seen.setdefault(r.run_id, r)
    return sweep, list(seen.values())


def _with_preset(block: dict, source: str) -> dict:
    """The block on top of its sweep preset's settings (``preset: reference``): the block's own values win."""
    name = block.get("preset")
    if name is None:
        return block
    if name not in SWEEP_PRESETS:
        raise ConfigError(f"{source}: preset {name!r} is unknown (presets: {', '.join(SWEEP_PRESETS)})")
    return _merge(SWEEP_PRESETS[name], block)


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


#: Settings that are not a run's: ``grid:`` over them would silently use one value for the whole sweep.
NOT_SWEEPABLE = {"name": "it names the sweep's results folder -- make one sweep per name",
                 "output_dir": "it is where the sweep's results go -- make one sweep per folder",
                 "runtime": "runtime options do not change a run's result -- set them once",
                 "grid": "a grid cannot sweep the grid", "include": "include blocks are expanded on their own",
                 "preset": "presets fill settings before the grid is expanded -- use include blocks, one per preset"}


def _grid_variants(block: dict, source: str) -> list[dict]:
    grid = block.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ConfigError(f"{source}: grid must map dotted settings to lists of values")
    for key in grid:
        first = ALIASES.get(str(key).split(".")[0], str(key).split(".")[0])
        if first in NOT_SWEEPABLE:
            raise ConfigError(f"{source}: grid: {key!r} cannot be swept: {NOT_SWEEPABLE[first]}")
        if not grid[key]:
            raise ConfigError(f"{source}: grid: {key!r} has no values (an empty list would make no runs)")
    out = []
    for values in itertools.product(*grid.values()):
        cfg = copy.deepcopy(block)
        for key, value in zip(grid, values):
            _set_dotted(cfg, key, value, source)
        out.append(cfg)
    return out


def _cells(sweep: SweepConfig, source: str) -> list[RunSpec]:
    """The product of the axes.  A method's settings blocks join the runs of that method only (ICL runs
    have no ``train``/``trainable``), so settings of other methods never change a run's id."""
    from ..methods import METHODS

    out = []
    for model, task, method, prompt, shots in itertools.product(sweep.model, sweep.task, sweep.method,
                                                               sweep.prompt, sweep.shots):
        trains = METHODS[method].trains
        _check_api(model, method, sweep.cd, source)
        for trainable in (sweep.trainable if trains else [None]):
            if trainable is not None:
                METHODS[method].check_trainable(trainable, source)
            for train_seed, data_seed in itertools.product(sweep.train_seeds if trains else [0], sweep.data_seeds):
                spec = {"model": model, "task": task, "method": method, "shots": shots, "data_seed": data_seed,
                        "train_seed": train_seed, "balanced": sweep.balanced, "prompt": prompt,
                        "eval": sweep.eval, "trainable": trainable}
                if trains:
                    spec["train"] = sweep.train
                if trainable == "lora":
                    spec["lora"] = sweep.lora
                if trainable == "bitfit":
                    spec["bitfit"] = sweep.bitfit
                if method in ("icl", "cd", "pbft", "vanilla"):
                    spec[method] = getattr(sweep, method)
                out.append(_validate(RunSpec, spec, source))
    return out


def _check_api(model, method: str, cd, source: str) -> None:
    """An api model gives next-token log-probabilities and nothing else: it runs ICL and teaches CD's labels."""
    if model.api is not None and method != "icl":
        raise ConfigError(f"{source}: model {model.name!r} (api: {model.api}) cannot run method {method!r}, which "
                          f"trains local weights; an api model runs icl, and teaches context distillation as "
                          f"cd.teacher (with a local student model)")
    teacher = cd.teacher if method == "cd" and cd is not None else None
    if teacher is not None and teacher.api is not None and cd.target != "labels":
        raise ConfigError(f"{source}: cd.target: {cd.target} needs the teacher's whole next-token distribution; "
                          f"an api teacher gives its top {teacher.top_logprobs or 5} log-probabilities: use "
                          f"cd.target: labels")


def _validate(model_cls: type[BaseModel], data: dict, source: str, overrides: dict | None = None):
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source, model_cls, overrides)) from None


def _allowed(model_cls: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'unknown field' messages."""
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


def format_errors(e: ValidationError, source: str, model_cls: type[BaseModel], overrides: dict | None = None) -> str:
    """One line per setting at fault: where (without pydantic's union tags), what is wrong, the value given;
    a setting given on the command line is named as the override it came from."""
    lines, by_where = [f"{source}: invalid config"], {}
    for err in e.errors():
        where = _where(err["loc"])
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
    except UnicodeDecodeError as e:
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


def load_sweep(path: str, overrides: list[str] = ()) -> tuple[SweepConfig, list[RunSpec]]:
    return expand(load_raw(path, overrides), path)
