"""Tasks declared by the user: their own files (CSV, TSV, JSONL, Parquet, Arrow) or a hub dataset.

The config names the files (or the hub dataset and its split names), the one or two text columns, the
label column and the label values; the label values' order fixes the label ids (and so which
verbalizer word belongs to which label).  Every row is validated the same way whatever the format: a
missing column or a label outside the declared ones is an error naming the file (or hub split) and row.
"""

from __future__ import annotations

import csv
import os

from ..config.schema import label_name
from ..errors import DataError, not_utf8
from .._util.progress import library_bars_off
from .schema import DatasetDef, EvalSetDef, LabelScheme, OriginalFile, TaskDef
from .sources import load_hub_split, read_jsonl

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None, ".parquet": None, ".arrow": None}
HUB_PREFIX = "hub:"  # the origin of a hub split: hub:<dataset>[/<config>]:<split>


def _records(path: str) -> list[tuple[int, dict]]:
    """(line or row number, row) pairs of a CSV/TSV/JSONL/Parquet/Arrow file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DataError(f"{path}: unsupported file type {ext!r}; use one of {', '.join(FORMATS)}")
    if ext in (".parquet", ".arrow"):
        return _table_rows(path, ext)
    if FORMATS[ext] is None:
        return list(enumerate(read_jsonl(path), 1))
    quoting = csv.QUOTE_NONE if ext == ".tsv" else csv.QUOTE_MINIMAL
    # utf-8-sig: a CSV saved by Excel starts with a byte-order mark, which would become part of the first name
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter=FORMATS[ext], quoting=quoting)
            return [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None


def _table_rows(path: str, ext: str) -> list[tuple[int, dict]]:
    """Rows of a Parquet file or an Arrow file (as ``datasets`` writes them), read through ``datasets``."""
    import datasets

    try:
        with library_bars_off(datasets_only=True):
            ds = datasets.Dataset.from_parquet(path) if ext == ".parquet" else datasets.Dataset.from_file(path)
    except Exception as e:  # not a parquet/arrow file, truncated, ...
        raise DataError(f"{path}: cannot read as {ext[1:]} ({type(e).__name__}: {_first_line(e)})") from None
    return _dataset_rows(ds)


def _dataset_rows(ds) -> list[tuple[int, dict]]:
    """(row number from 1, row) of a ``datasets.Dataset``; class-label columns as their names."""
    import datasets

    names = {c: f for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}
    rows = []
    for n, row in enumerate(ds, 1):
        for c, feature in names.items():
            if isinstance(row.get(c), int) and 0 <= row[c] < feature.num_classes:
                row[c] = _ClassValue(row[c], feature.int2str(row[c]))
        rows.append((n, row))
    return rows


class _ClassValue(int):
    """A class-label cell: the integer code, matching a declared label given as that code or as its name."""

    def __new__(cls, code: int, name: str):
        obj = super().__new__(cls, code)
        obj.name = name
        return obj


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:300]


def _label_index(value, labels: tuple[str, ...]) -> int | None:
    for candidate in (str(int(value)), value.name) if isinstance(value, _ClassValue) else (label_name(value),):
        if candidate in labels:
            return labels.index(candidate)
    return None


def user_file_reader(text_fields: tuple[str, ...], label_field: str, labels: tuple[str, ...]):
    """A reader that validates every row: text columns present, label one of ``labels``."""

    def read(path: str) -> list[dict]:
        unit = "row" if path.lower().endswith((".parquet", ".arrow")) else "line"
        return validated_rows(path, _records(path), text_fields, label_field, labels, unit)

    return read


def validated_rows(origin: str, records: list[tuple[int, dict]], text_fields: tuple[str, ...], label_field: str,
                   labels: tuple[str, ...], unit: str) -> list[dict]:
    """Rows as the task's records (text fields, label id, idx); the first bad row stops with its place."""
    out = []
    if not records:
        raise DataError(f"{origin}: no rows (only a header, or an empty file)")
    for i, (line, row) in enumerate(records):
        for f in (*text_fields, label_field):
            if f in row and row[f] is None:
                raise DataError(f"{origin}: {unit} {line}: field {f!r} is null (empty)")
            if f not in row:
                raise DataError(f"{origin}: {unit} {line}: no field {f!r} (fields: {', '.join(map(str, row))})")
        label = _label_index(row[label_field], labels)
        if label is None:
            shown = row[label_field].name if isinstance(row[label_field], _ClassValue) else row[label_field]
            raise DataError(f"{origin}: {unit} {line}: label {shown!r} in field {label_field!r} "
                            f"is not one of the declared labels {list(labels)}")
        rec = {f: str(row[f]) for f in text_fields}
        rec.update(label=label, idx=i)
        out.append(rec)
    return out


def hub_reader(hub: str, config: str | None, revision: str | None, split: str, text_fields: tuple[str, ...],
               label_field: str, labels: tuple[str, ...]):
    """A reader of one split of a hub dataset (or a local dataset folder), through ``datasets``: its rows,
    and the origin with the revision read (``hub:<ds>:<split>@<commit>``)."""

    def read(origin: str) -> tuple[list[dict], str]:
        try:
            ds, commit = load_hub_split(hub, config, split, revision)
        except Exception as e:  # offline, no such dataset/config/split, auth: one clear message
            raise DataError(f"{origin}: cannot load split {split!r} of hub dataset {hub!r}"
                            + (f" (config {config!r})" if config else "")
                            + f": {type(e).__name__}: {_first_line(e)}") from None
        rows = validated_rows(origin, _dataset_rows(ds), text_fields, label_field, labels, "row")
        return rows, f"{origin}@{commit}"

    return read


def build_user_task(name: str, files: dict[str, str], text_fields: list[str], label_field: str,
                    labels: list, ood: dict[str, str], base_dir: str, hub: str | None = None,
                    config: str | None = None, revision: str | None = None) -> tuple[TaskDef, dict[str, EvalSetDef]]:
    """A task (and its OOD eval sets) whose splits are the user's files, paths relative to ``base_dir`` --
    or, with ``hub``, the named splits of that hub dataset (``ood`` values are then split names too)."""
    if not 1 <= len(text_fields) <= 2:
        raise DataError(f"task {name!r}: text_fields must name one or two columns, got {text_fields}")
    label_names = tuple(label_name(v) for v in labels)
    if len(set(label_names)) != len(label_names) or len(label_names) < 2:
        raise DataError(f"task {name!r}: labels must be at least two distinct values, got {labels}")
    all_files = {**files, **{f"ood:{k}": v for k, v in ood.items()}}
    if hub is not None:
        where = hub + (f"/{config}" if config else "")
        originals = {split: OriginalFile((f"{HUB_PREFIX}{where}:{s}",), hub_reader(
            hub, config, revision, s, tuple(text_fields), label_field, label_names)) for split, s in all_files.items()}
    else:
        reader = user_file_reader(tuple(text_fields), label_field, label_names)
        originals = {split: OriginalFile((os.path.abspath(os.path.join(base_dir, p)),), reader)
                     for split, p in all_files.items()}
    dataset = DatasetDef(name, tuple(text_fields), label_names, tuple(all_files), originals=originals,
                         user_files=True)
    scheme = LabelScheme(label_names, tuple(range(len(label_names))), f"user:{name}")
    task = TaskDef(name, dataset, "train", "validation", scheme, "custom", ood=tuple(ood),
                   description=f"user task from {files['train']}")
    evals = {k: EvalSetDef(k, dataset, f"ood:{k}", scheme, description=f"user eval set {v}") for k, v in ood.items()}
    return task, evals
