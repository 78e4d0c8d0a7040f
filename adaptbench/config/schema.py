"""Configs: a sweep file (YAML) with command-line overrides, validated, expanded into runs.

A sweep lists its axes -- model, task, method, shots, data seeds, train seeds, prompt -- each a value
or a list; any other setting can be varied with ``grid:`` (``{"icl.prefix_cache": [true, false]}``).
The cartesian product gives the runs.  A :class:`RunSpec` holds everything that determines a run's
result; its hash is the run id.  How the run is executed (batch size, data folder) lives in
:class:`RuntimeOptions` and does not change the id.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    Tag,
    field_validator,
    model_validator,
)

from .blocks import BLOCKS
from .settings import ModelSpec, Strict

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
    keep_checkpoints: bool = Field(False, description="keep a training run's checkpoints after its record is "
                                                      "written (--keep-checkpoints)")


class _CarriesBlocks:
    """``spec.cd``, ``sweep.train``: a settings block by its registered name (None where not carried)."""

    def __getattr__(self, name: str):
        if name in BLOCKS:
            return self.__dict__.get("blocks", {}).get(name)
        return super().__getattr__(name)


def _gather_blocks(data):
    """Blocks given as top-level keys (``RunSpec(..., cd={...})``, a record's spec) go into ``blocks``, each
    validated by its registered class."""
    if not isinstance(data, dict) or not any(name in data for name in BLOCKS):
        return data
    data = dict(data)
    blocks = dict(data.get("blocks") or {})
    for name in [k for k in data if k in BLOCKS]:
        value = data.pop(name)
        blocks[name] = value if isinstance(value, BLOCKS[name].settings) else BLOCKS[name].settings.model_validate(
            value)
    data["blocks"] = blocks
    return data


class RunSpec(_CarriesBlocks, Strict):
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
    trainable: str | None = None
    blocks: dict[str, Any] = Field(default_factory=dict, description="the settings blocks of this run's method and "
                                   "policy (train, lora, cd, ...), by name; in the identity as top-level keys")
    resolved: dict[str, Any] | None = Field(None, description="set by the planner, not in configs: the dtype "
                                            "'auto' resolves to and content hashes of local files (sweep/identity.py)")

    _blocks = model_validator(mode="before")(_gather_blocks)

    @property
    def task_name(self) -> str:
        return self.task if isinstance(self.task, str) else self.task.name

    def identity(self) -> dict:
        """What the run id hashes: the spec, its blocks as top-level keys (``{"cd": {...}}``), ``None`` left out, and
    so are fields that change how a run executes, not its result (``train.checkpoint_every``)."""
        blocks = {name: block.model_dump(mode="json", exclude_none=True, exclude=_not_identity(block))
                  for name, block in self.blocks.items()}
        return {"spec_version": SPEC_VERSION, **self.model_dump(mode="json", exclude_none=True, exclude={"blocks"}),
                **blocks}

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _not_identity(block) -> set[str]:
    """A block's fields marked ``json_schema_extra={"identity": False}``."""
    return {name for name, f in type(block).model_fields.items()
            if isinstance(f.json_schema_extra, dict) and f.json_schema_extra.get("identity") is False}


def _listify(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


def _seed_list(v: Any) -> Any:
    """``data_seeds: 10`` means seeds 0..9; a list is taken as is."""
    if isinstance(v, int) and not isinstance(v, bool):
        if v < 1:
            raise ValueError("a seed count must be >= 1 (write a list, e.g. [7], for one specific seed)")
        return list(range(v))
    return v


class SweepConfig(_CarriesBlocks, Strict):
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
    trainable: list[str] = Field(["full"], min_length=1, description="which parameters fine-tuning methods train "
                                                                 "(adaptbench methods lists each method's)")
    blocks: dict[str, Any] = Field(default_factory=dict, description="every registered settings block (train, "
                                   "lora, icl, cd, ...), validated by its own class; written as top-level keys")
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
