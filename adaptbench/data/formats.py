"""Readers for the files as their authors published them: GLUE TSVs, the PAWS-QQP TSV, HANS.

Each reader returns rows with the hub's field names and integer label coding, so a split read from an
original file, from a normalised JSONL copy or from the hub is the same list of rows.
"""

from __future__ import annotations

import ast
import csv

from ..errors import DataError, not_utf8

csv.field_size_limit(2**31 - 1)


def read_tsv(path: str, header: bool = True) -> tuple[list[str] | None, list[list[str]]]:
    """Rows of a TSV file read with quoting disabled (GLUE's RTE/MNLI texts contain literal quotes)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(not_utf8(path)) from None
    rows = [r for r in rows if r]
    if header:
        if not rows:
            raise DataError(f"{path}: empty file (expected a header line)")
        return rows[0], rows[1:]
    return None, rows


def _column(header: list[str], names: tuple[str, ...], path: str) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise DataError(f"{path}: no column {' or '.join(map(repr, names))} in header {header}")


def _label(value: str, names: tuple[str, ...], path: str, line: int) -> int:
    value = value.strip()
    if value in names:
        return names.index(value)
    if value.isdigit() and int(value) < len(names):
        return int(value)
    raise DataError(f"{path}: line {line}: label {value!r} is not one of {list(names)}")


def pair_tsv_reader(text1: tuple[str, ...], text2: tuple[str, ...], label: tuple[str, ...],
                    label_names: tuple[str, ...], out_fields: tuple[str, str]):
    """A reader for header-named sentence-pair TSVs (GLUE RTE/MNLI/QQP, McCoy's MNLI dev, HANS txt)."""

    def read(path: str) -> list[dict]:
        header, rows = read_tsv(path)
        c1, c2, cl = (_column(header, names, path) for names in (text1, text2, label))
        extra = {name: header.index(name) for name in ("heuristic", "subcase", "template") if name in header}
        out = []
        for i, row in enumerate(rows):
            line = i + 2
            if len(row) <= max(c1, c2, cl):
                raise DataError(f"{path}: line {line}: {len(row)} fields, expected {len(header)}")
            rec = {out_fields[0]: row[c1], out_fields[1]: row[c2],
                   "label": _label(row[cl], label_names, path, line), "idx": i}
            rec.update({name: row[c] for name, c in extra.items()})
            out.append(rec)
        return out

    return read


def read_glue_cola(path: str) -> list[dict]:
    """GLUE CoLA: no header; columns source, label, original judgement, sentence."""
    _, rows = read_tsv(path, header=False)
    out = []
    for i, row in enumerate(rows):
        if len(row) != 4:
            raise DataError(f"{path}: line {i + 1}: {len(row)} fields, expected 4 (CoLA has no header)")
        out.append({"sentence": row[3], "label": _label(row[1], ("0", "1"), path, i + 1), "idx": i})
    return out


def _unbytes(text: str) -> str:
    """PAWS-QQP as shipped by the reference study wraps sentences as Python byte literals: b'...'."""
    if len(text) >= 3 and text[0] == "b" and text[1] in "'\"" and text[-1] == text[1]:
        try:
            return ast.literal_eval(text).decode("utf-8")
        except (ValueError, SyntaxError, UnicodeDecodeError):
            return text[2:-1]
    return text


def read_paws_tsv(path: str) -> list[dict]:
    header, rows = read_tsv(path)
    c1, c2, cl = (_column(header, (n,), path) for n in ("sentence1", "sentence2", "label"))
    for i, r in enumerate(rows):
        if len(r) <= max(c1, c2, cl):
            raise DataError(f"{path}: line {i + 2}: {len(r)} fields, expected {len(header)}")
    return [{"sentence1": _unbytes(r[c1]), "sentence2": _unbytes(r[c2]),
             "label": _label(r[cl], ("0", "1"), path, i + 2), "idx": i} for i, r in enumerate(rows)]


def read_hans_jsonl(path: str) -> list[dict]:
    """HANS evaluation set as JSON lines with gold_label names (sentence1/sentence2/heuristic)."""
    from .sources import read_jsonl  # one JSONL reader: bad JSON, non-objects, non-UTF-8 named by line

    out = []
    for i, row in enumerate(read_jsonl(path)):
        missing = [k for k in ("sentence1", "sentence2", "gold_label") if not isinstance(row.get(k), str)]
        if missing:
            raise DataError(f"{path}: row {i + 1}: no text field {missing[0]!r} (fields: {', '.join(row)})")
        out.append({"premise": row["sentence1"], "hypothesis": row["sentence2"],
                    "label": _label(row["gold_label"], ("entailment", "non-entailment"), path, i + 1),
                    "heuristic": row.get("heuristic", ""), "idx": i})
    return out


read_hans_txt = pair_tsv_reader(("sentence1",), ("sentence2",), ("gold_label",),
                                ("entailment", "non-entailment"), ("premise", "hypothesis"))


def read_hans(path: str) -> list[dict]:
    return read_hans_jsonl(path) if path.endswith(".jsonl") else read_hans_txt(path)
