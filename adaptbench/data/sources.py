"""Where splits come from: a local data folder (normalised JSONL or the original files) or the HF hub.

Order for ``source: auto``: ``<dir>/<dataset>/<split>.jsonl``, then the dataset's original files in
``<dir>`` (a GLUE download, HANS/PAWS releases), then the Hugging Face hub.  The folder is
``--data-dir`` or ``ADAPTBENCH_DATA_DIR``.  Errors say every place that was tried.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache

from ..errors import DataError, not_utf8
from .schema import DatasetDef, Example, LabelScheme

SOURCES = ("auto", "local", "original", "hub")
DATA_DIR_ENV = "ADAPTBENCH_DATA_DIR"


@dataclass(frozen=True)
class Split:
    """Raw rows of one split and where they were read from."""

    rows: tuple[dict, ...]
    origin: str  # a path or "hub:<path>/<config>"


def read_jsonl(path: str) -> list[dict]:
    try:
        return _read_jsonl(path)
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None


def _read_jsonl(path: str) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}: line {n}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def resolve_data_dir(data_dir: str | None) -> str | None:
    data_dir = data_dir or os.environ.get(DATA_DIR_ENV) or None
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"data folder {data_dir!r} does not exist (from --data-dir or {DATA_DIR_ENV})")
    return data_dir


@lru_cache(maxsize=32)
def _read_local(data_dir: str, dataset: DatasetDef, split: str, mode: str) -> Split | None:
    if mode in ("auto", "local"):
        path = os.path.join(data_dir, dataset.name, f"{split}.jsonl")
        if os.path.isfile(path):
            return Split(tuple(read_jsonl(path)), path)
    original = dataset.originals.get(split)
    if mode in ("auto", "original") and original is not None:
        for rel in original.paths:
            path = os.path.join(data_dir, rel)
            if os.path.isfile(path):
                return Split(tuple(original.reader(path)), path)
    return None


def _tried(data_dir: str, dataset: DatasetDef, split: str, mode: str) -> list[str]:
    tried = []
    if mode in ("auto", "local"):
        tried.append(os.path.join(data_dir, dataset.name, f"{split}.jsonl"))
    if mode in ("auto", "original") and split in dataset.originals:
        tried += [os.path.join(data_dir, p) for p in dataset.originals[split].paths]
    return tried


@lru_cache(maxsize=32)
def _read_user_file(dataset: DatasetDef, split: str) -> Split:
    path = dataset.originals[split].paths[0]
    if not path.startswith("hub:") and not os.path.isfile(path):
        raise DataError(f"task {dataset.name!r}: {split} file {path} does not exist")
    rows = dataset.originals[split].reader(path)
    rows, origin = rows if isinstance(rows, tuple) else (rows, path)  # a hub reader adds the revision read
    return Split(tuple(rows), origin)


def load_hub_split(path: str, config: str | None, split: str, revision: str | None = None):
    """A split of a hub dataset (or a local dataset folder) through ``datasets``' builder -- what
    ``load_dataset`` does -- and the revision it was read at: for a hub dataset the commit its branch
    resolved to (the builder's hash), for a local folder a hash of its files.  Origins end in ``@<it>``."""
    import datasets  # imported here: heavy, and only needed for the hub path

    from .._util.progress import library_bars_off

    with library_bars_off(datasets_only=True):
        builder = datasets.load_dataset_builder(path, config, revision=revision)
        builder.download_and_prepare()
        return builder.as_dataset(split=split), builder.hash


@lru_cache(maxsize=8)
def _read_hub(dataset: DatasetDef, split: str) -> Split:
    """Load from the Hugging Face hub with ``datasets`` (needs network on first use; cached after)."""
    path, config = dataset.hub
    ds, commit = load_hub_split(path, config, split)
    rows = []
    for i, row in enumerate(ds):
        row = dict(row)
        row.setdefault("idx", i)
        rows.append(row)
    return Split(tuple(rows), f"hub:{path}" + (f"/{config}" if config else "") + f"@{commit}")


def load_split(dataset: DatasetDef, split: str, data_dir: str | None = None, source: str = "auto") -> Split:
    """Raw rows of ``dataset``/``split`` from the first place that has them."""
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; choose one of {', '.join(SOURCES)}")
    if split not in dataset.splits:
        raise DataError(f"dataset {dataset.name!r} has no split {split!r} (splits: {', '.join(dataset.splits)})")
    if dataset.user_files:
        return _read_user_file(dataset, split)
    tried: list[str] = []
    if data_dir is not None and source != "hub":
        found = _read_local(data_dir, dataset, split, source)
        if found is not None:
            return found
        tried = _tried(data_dir, dataset, split, source)
    if source in ("auto", "hub") and dataset.hub is not None:
        try:
            return _read_hub(dataset, split)
        except Exception as e:  # network, auth, missing dataset: all end the same way for the user
            tried.append(f"hub {dataset.hub[0]} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
    hint = f" Get it from: {dataset.note}." if dataset.note else ""
    where = "; ".join(tried) if tried else "nowhere (no data folder given and no hub copy)"
    raise DataError(f"cannot load {dataset.name}/{split}: tried {where}.{hint} "
                    f"Point --data-dir or {DATA_DIR_ENV} at a folder laid out as <dataset>/<split>.jsonl.")


def to_examples(split: Split, dataset: DatasetDef, labels: LabelScheme,
                where: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> list[Example]:
    """Validate raw rows and turn them into examples in ``labels``' coding, keeping rows matching ``where``."""
    out = []
    n_raw = len(dataset.label_names)
    seen: dict[int, int] = {}  # idx -> row: predictions and records are keyed by it
    for n, row in enumerate(split.rows, 1):
        texts = []
        for f in dataset.fields:
            value = row.get(f)
            if not isinstance(value, str):
                problem = "missing" if value is None else f"not text ({type(value).__name__})"
                raise DataError(f"{split.origin}: row {n}: text field {f!r} is {problem} "
                                f"(row has fields: {', '.join(map(str, row))})")
            texts.append(value)
        raw = row.get("label")
        if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < n_raw:
            raise DataError(f"{split.origin}: row {n}: label {raw!r} is not in the label set "
                            f"{dict(enumerate(dataset.label_names))}")
        label = labels.raw_to_label[raw]
        if label is None:
            continue
        meta = tuple((k, str(row[k])) for k in dataset.meta_fields if row.get(k) not in (None, ""))
        if any(dict(meta).get(k) not in allowed for k, allowed in where):
            continue
        idx = row.get("idx", n - 1)
        if isinstance(idx, bool) or not isinstance(idx, int):
            if not (isinstance(idx, str) and idx.strip().lstrip("-").isdigit()):
                raise DataError(f"{split.origin}: row {n}: idx {idx!r} is not an integer")
            idx = int(idx)
        if idx in seen:
            raise DataError(f"{split.origin}: row {n}: idx {idx} is also the idx of row {seen[idx]} (each row "
                            f"needs its own)")
        seen[idx] = n
        out.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label, idx, meta))
    if not out:
        cond = f" matching {({k: list(v) for k, v in where})}" if where else ""
        raise DataError(f"{split.origin}: no examples{cond} (empty split)")
    return out
