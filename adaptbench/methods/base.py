"""What a method is: ``fit`` on the run's sample returns a predictor; the runner does the rest.

The runner owns data, model loading, timing, metrics and records; a method only says how the model
is adapted and how it scores an example.  A new method is a small module with one registered class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol

import numpy as np

from ..config.schema import RunSpec, RuntimeOptions
from ..measure.costs import CostTracker
from ..models.loading import LoadedModel
from ..prompts.prompt import PromptEncoder
from ..data.schema import EvalSetDef, Example, TaskDef


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


@dataclass
class Predictions:
    """Scores of one eval set, in the order of its examples; unscored rows are NaN."""

    logits: np.ndarray  # (n, n_labels) verbalizer / head logits
    log_norm: np.ndarray | None = None  # (n,) full-vocabulary log normaliser, where the method has one
    tokens: int = 0
    padded_tokens: int = 0
    compute_dtype: str | None = None  # what the scoring's matmuls ran in, where observed

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.logits).all(axis=1)

    @property
    def labels(self) -> np.ndarray:
        """Predicted label ids; -1 where the example was not scored."""
        out = np.full(len(self.logits), -1)
        ok = self.scored
        out[ok] = self.logits[ok].argmax(axis=1)
        return out


class Predictor(Protocol):
    def predict(self, examples: list[Example], name: str) -> Predictions: ...


class Method:
    name: ClassVar[str]
    description: ClassVar[str]
    trains: ClassVar[bool] = False  # changes the model's weights (so it needs a fresh copy)
    trainable: ClassVar[tuple[str, ...]] = ()  # the trainable-parameter policies it supports

    @classmethod
    def preflight(cls, spec: RunSpec, config_dir: str) -> None:
        """Check method settings against the world (files, ...) before any model loads."""

    @classmethod
    def check_trainable(cls, policy: str, source: str) -> None:
        if policy not in cls.trainable:
            from ..errors import ConfigError

            raise ConfigError(f"{source}: method {cls.name!r} cannot use trainable: {policy} "
                              f"(it supports {', '.join(cls.trainable)})" + TRAINABLE_HINTS.get((cls.name, policy), ""))

    def fit(self, ctx: RunContext) -> Predictor:
        raise NotImplementedError


TRAINABLE_HINTS = {("pbft", "head"): ": pbft adds no head, it trains through the LM head's verbalizer rows"}

METHODS: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    if cls.name in METHODS:
        raise ValueError(f"method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls
