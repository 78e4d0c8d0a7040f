"""Tasks declared by the user from their own CSV, TSV or JSONL files.

The config names the files, the one or two text columns, the label column and the label values; the
label values' order fixes the label ids (and so which verbalizer word belongs to which label).
"""

from __future__ import annotations

import csv
import os

from ..errors import DataError
from .schema import DatasetDef, EvalSetDef, LabelScheme, OriginalFile, TaskDef
from .sources import read_jsonl

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".json": None}


def _records(path: str) -> list[tuple[int, dict]]:
    """(line number, row) pairs of a CSV/TSV/JSONL file."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DataError(f"{path}: unsupported file type {ext!r}; use one of {', '.join(FORMATS)}")
    if FORMATS[ext] is None:
        return list(enumerate(read_jsonl(path), 1))
    quoting = csv.QUOTE_NONE if ext == ".tsv" else csv.QUOTE_MINIMAL
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=FORMATS[ext], quoting=quoting)
        return [(reader.line_num, row) for row in reader]


def user_file_reader(text_fields: tuple[str, ...], label_field: str, labels: tuple[str, ...]):
    """A reader that validates every row: text columns present, label one of ``labels``."""

    def read(path: str) -> list[dict]:
        out = []
        for i, (line, row) in enumerate(_records(path)):
            for f in (*text_fields, label_field):
                if row.get(f) is None:
                    raise DataError(f"{path}: line {line}: no field {f!r} (fields: {', '.join(map(str, row))})")
            value = str(row[label_field]).strip()
            if value not in labels:
                raise DataError(f"{path}: line {line}: label {row[label_field]!r} in field {label_field!r} "
                                f"is not one of the declared labels {list(labels)}")
            rec = {f: str(row[f]) for f in text_fields}
            rec.update(label=labels.index(value), idx=i)
            out.append(rec)
        return out

    return read


def build_user_task(name: str, files: dict[str, str], text_fields: list[str], label_field: str,
                    labels: list, ood: dict[str, str], base_dir: str) -> tuple[TaskDef, dict[str, EvalSetDef]]:
    """A task (and its OOD eval sets) whose splits are the user's files, paths relative to ``base_dir``."""
    if not 1 <= len(text_fields) <= 2:
        raise DataError(f"task {name!r}: text_fields must name one or two columns, got {text_fields}")
    label_names = tuple(str(v) for v in labels)
    if len(set(label_names)) != len(label_names) or len(label_names) < 2:
        raise DataError(f"task {name!r}: labels must be at least two distinct values, got {labels}")
    reader = user_file_reader(tuple(text_fields), label_field, label_names)
    all_files = {**files, **{f"ood:{k}": v for k, v in ood.items()}}
    originals = {split: OriginalFile((os.path.abspath(os.path.join(base_dir, p)),), reader)
                 for split, p in all_files.items()}
    dataset = DatasetDef(name, tuple(text_fields), label_names, tuple(all_files), originals=originals,
                         user_files=True)
    scheme = LabelScheme(label_names, tuple(range(len(label_names))), f"user:{name}")
    task = TaskDef(name, dataset, "train", "validation", scheme, "custom", ood=tuple(ood),
                   description=f"user task from {files['train']}")
    evals = {k: EvalSetDef(k, dataset, f"ood:{k}", scheme, description=f"user eval set {v}") for k, v in ood.items()}
    return task, evals
