"""What a method is: ``fit`` on the run's sample returns a predictor; the runner does the rest.

The runner owns data, model loading, timing, metrics and records; a method only says how the model
is adapted and how it scores an example.  A new method is a small module with one registered class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field


from .._util.registry import Registry
from ..config.blocks import MethodTraits, register_method
from ..config.schema import RunSpec, RuntimeOptions
from ..config.settings import ModelSpec
from ..data.schema import EvalSetDef, Example, TaskDef
from ..measure.costs import CostTracker
from ..models.loading import LoadedModel
from ..prompts.prompt import PromptEncoder
from ..scoring.interface import ScoringModel
from ..scoring.scores import Scores
from ..training.precision import autocast


@dataclass
class RunContext:
    """Everything a method may use; ``info`` is written to the result record as ``method_info``."""

    spec: RunSpec
    task: TaskDef
    loaded: LoadedModel
    encoder: PromptEncoder
    sample: list[Example]
    pool: list[Example]
    costs: CostTracker
    runtime: RuntimeOptions
    progress: Callable  # progress(description, total) -> context manager yielding advance(n)
    evals: list[tuple[str, EvalSetDef, list[Example]]] = field(default_factory=list)  # for evaluation points
    out_dir: str | None = None  # the run's folder, for saved weights
    config_dir: str = "."  # relative paths in the config resolve from here
    load_model: Callable | None = None  # load_model(ModelSpec) -> LoadedModel: another model (a teacher)
    info: dict = field(default_factory=dict)
    on_step: Callable[[int, dict], None] = lambda step, values: None  # --log-with: per-step values go here

    def compute(self, loaded: LoadedModel | None = None):
        """The autocast a training run computes its float32 master weights under (``train.mixed_precision``,
        resolved): its teacher pass, held-out measures and per-query costs run as its training and predictions
        do.  A run without a train block, or another model (a teacher of its own), computes in its weights' dtype."""
        mixed = self.spec.train.mixed_precision if self.spec.train is not None else "no"
        return autocast(self.loaded.device, mixed if loaded is None or loaded is self.loaded else "no")

    def scoring_model(self, loaded: LoadedModel | None = None) -> ScoringModel:
        """The run's model (or another, a teacher) behind the one model interface."""
        return ScoringModel(loaded or self.loaded, self.runtime)


class Predictor(Protocol):
    def predict(self, examples: list[Example], name: str) -> Scores: ...


class RecordPart(BaseModel):
    """A part of a run's record (:mod:`adaptbench.store.record`): known fields typed; keys it does not know (an
    older or newer version's) kept."""

    model_config = ConfigDict(extra="allow")


class MethodInfo(RecordPart):
    """What every method's runs record (``method_info``); each method's ``info`` class adds its own fields."""

    capabilities_off: dict[str, str] = Field(default_factory=dict, description="what was off for this model, and "
                                             "why (prefix_cache, shared_prefix, packing, ...)")
    batch_size_backoff: dict[str, Any] | None = Field(
        None, description="runtime.batch_size auto on a GPU: the batch sizes that ran out of memory "
                          "(out_of_memory_at) and the size scoring settled on")


class Method:
    """A method: ``fit(ctx)`` adapts the run's model (or not) and returns a predictor.  Its class attributes
    are what config knows of it (:class:`adaptbench.config.blocks.MethodTraits`), registered by :func:`register`."""

    name: ClassVar[str]
    description: ClassVar[str]
    trains: ClassVar[bool] = False  # changes the model's weights (so it needs a fresh copy)
    trainable: ClassVar[tuple[str, ...]] = ()  # the trainable-parameter policies it supports
    settings: ClassVar[type | None] = None  # its settings block (under its name in a config), if it has one
    api_models: ClassVar[bool] = False  # a model behind an API can run it (log-probabilities only)
    hints: ClassVar[dict[str, str]] = {}  # trainable policy -> why it does not apply, for the error
    info: ClassVar[type[MethodInfo]] = MethodInfo  # what its runs record (method_info), typed

    @classmethod
    def preflight(cls, spec: RunSpec, config_dir: str) -> None:
        """Check method settings against the world (files, ...) before any model loads."""

    # What the sweep asks of a method before it runs it -- the models and files a run reads, what its identity
    # adds, whether it needs a task -- so that nothing outside the method knows its settings.

    @classmethod
    def models(cls, spec: RunSpec) -> list[ModelSpec]:
        """Every model a run reads (its verbalizers are checked, its files hashed, its endpoint asked)."""
        return [spec.model]

    @classmethod
    def files(cls, spec: RunSpec, config_dir: str) -> dict[str, str]:
        """Local files a run reads besides its task's and models', by role, relative to the config's folder."""
        return {}

    @classmethod
    def resolved(cls, spec: RunSpec) -> dict:
        """What a run's identity holds besides its settings (the version of what the method computes)."""
        return {}

    @classmethod
    def task_needed(cls, spec: RunSpec) -> str | None:
        """None when a run can do without a task (``task: none``), else why it needs one."""
        return f"method {cls.name} needs a task"

    @classmethod
    def api_prompts(cls, spec: RunSpec, prompt, sample: list, evals: list) -> list[str]:
        """The prompt texts a run sends to a model behind an API (``--dry-run`` counts them): each eval query
        after the demonstrations."""
        context = prompt.context(sample)
        return [context + prompt.query(ex) for _, examples, _ in evals for ex in examples]

    def fit(self, ctx: RunContext) -> Predictor:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method")


def register(cls: type[Method]) -> type[Method]:
    """One registration: the method's class for the sweep, its traits and settings block for config."""
    METHODS.add(cls.name, cls)
    register_method(MethodTraits(cls.name, cls.description, cls.trains, cls.trainable, cls.settings, cls.api_models,
                                 dict(cls.hints)))
    return cls
