"""The nouns of the data layer: examples, datasets, tasks and evaluation sets, declared as data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Example:
    """One classification example, in the label coding of the task that uses it."""

    text1: str
    text2: str | None
    label: int
    idx: int  # the row's id in its split (the `idx` column, or its position)
    meta: tuple[tuple[str, str], ...] = ()  # extra fields kept for slicing, e.g. (("heuristic", "lexical_overlap"),)

    def get(self, key: str) -> str | None:
        return dict(self.meta).get(key)


# A reader of a published file format: path -> rows with the hub's field names and integer labels.
Reader = Callable[[str], list[dict]]


@dataclass(frozen=True)
class OriginalFile:
    """Where a split lies in an original distribution (GLUE download, HANS/PAWS releases) and how to read it."""

    paths: tuple[str, ...]  # candidates relative to the data folder, first found wins
    reader: Reader


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one object per dataset
class DatasetDef:
    """A dataset as published: its splits, text fields and raw label coding (that of the HF hub)."""

    name: str  # folder name in a local data dir: <dir>/<name>/<split>.jsonl
    fields: tuple[str, ...]  # text fields, hub naming; one or two
    label_names: tuple[str, ...]  # raw labels, index = integer code
    splits: tuple[str, ...]
    hub: tuple[str, str | None] | None = None  # (path, config) for datasets.load_dataset
    originals: dict[str, OriginalFile] = field(default_factory=dict)  # split -> original file
    meta_fields: tuple[str, ...] = ()  # extra columns kept on each example (e.g. HANS heuristic)
    note: str = ""  # where to get it when neither local nor hub works
    user_files: bool = False  # a user task: ``originals`` hold absolute paths, no data folder or hub


@dataclass(frozen=True)
class LabelScheme:
    """A task's labels: names, which raw labels map to them, and the label space they live in.

    ``space`` lines tasks up with evaluation sets: two sets in the same space use the same label ids
    for the same meaning (HANS non-entailment == RTE not_entailment == MNLI contradiction == 1).
    """

    names: tuple[str, ...]
    raw_to_label: tuple[int | None, ...]  # index = raw label; None drops the row (MNLI neutral)
    space: str


@dataclass(frozen=True)
class EvalSetDef:
    """A set the adapted model is evaluated on: a dataset split in some label scheme."""

    name: str
    dataset: DatasetDef
    split: str
    labels: LabelScheme
    metrics: tuple[str, ...] = ("accuracy",)
    slice_by: tuple[str, ...] = ()  # meta fields whose values get their own metrics
    default_filter: tuple[tuple[str, tuple[str, ...]], ...] = ()  # rows kept by default (HANS: lexical_overlap)
    description: str = ""


@dataclass(frozen=True)
class TaskDef:
    """A training task: the train pool, the in-domain evaluation split and its default OOD sets."""

    name: str
    dataset: DatasetDef
    train_split: str
    validation_split: str
    labels: LabelScheme
    family: str  # selects the prompt presets: nli, paraphrase, acceptability, custom
    metrics: tuple[str, ...] = ("accuracy",)
    ood: tuple[str, ...] = ()
    description: str = ""

    @property
    def validation(self) -> EvalSetDef:
        return EvalSetDef(self.name, self.dataset, self.validation_split, self.labels, self.metrics,
                          description=f"{self.name} {self.validation_split} (in-domain)")
