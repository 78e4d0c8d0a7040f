"""User tasks from the hub's formats: Parquet and Arrow files, and a dataset through datasets.load_dataset
(a local dataset folder here; a hub id takes the same path), validated like CSV files."""

from __future__ import annotations

import datasets
import pytest

from .test_run import _config, _records, _run

LABELS = ["no", "yes"]


def _rows(n: int) -> dict:
    return {"text": [f"sentence number {i} is {'good' if i % 2 else 'bad'}" for i in range(n)],
            "label": [i % 2 for i in range(n)]}


def _class_label_dataset(n: int) -> datasets.Dataset:
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=LABELS)})
    return datasets.Dataset.from_dict(_rows(n), features=features)


def _task(train: str, validation: str, extra: str = "", labels: str = "[no, yes]") -> str:
    return (f"task: {{name: mine, train: {train}, validation: {validation}, text_fields: [text], labels: {labels}"
            f"{extra}}}\nprompt: {{verbalizer: [' No', ' Yes']}}\n")


def test_parquet_files(tmp_path, data_dir, tiny_models):
    datasets.Dataset.from_dict(_rows(20)).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_dict(_rows(6)).to_parquet(str(tmp_path / "dev.parquet"))
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], _task("train.parquet", "dev.parquet", labels="[0, 1]"),
                                              seeds=1))
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["metrics"]["mine"]["all"]["n"] == 6 and rec["status"] == "ok"


def test_arrow_files_with_class_labels_matched_by_name(tmp_path, data_dir, tiny_models):
    _class_label_dataset(20).save_to_disk(str(tmp_path / "train"))
    _class_label_dataset(6).save_to_disk(str(tmp_path / "dev"))
    arrow = "data-00000-of-00001.arrow"
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], _task(f"train/{arrow}", f"dev/{arrow}"), seeds=1))
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["sample"]["label_counts"] == {"no": 2, "yes": 2}


def test_a_dataset_through_load_dataset(tmp_path, data_dir, tiny_models):
    folder = tmp_path / "hubdata"
    folder.mkdir()
    _class_label_dataset(20).to_parquet(str(folder / "train.parquet"))
    _class_label_dataset(6).to_parquet(str(folder / "validation.parquet"))
    _class_label_dataset(4).to_parquet(str(folder / "test.parquet"))
    task = _task("train", "validation", f", hub: {folder}, ood: {{held: test}}")
    result = _run(tmp_path, data_dir, _config(tiny_models["opt"], task, seeds=1))
    assert result.exit_code == 0, result.output
    rec = _records(tmp_path)[0]
    assert rec["metrics"]["mine"]["all"]["n"] == 6 and rec["metrics"]["held"]["all"]["n"] == 4
    origin, revision = rec["eval_sets"]["mine"]["origin"].split("@")
    assert origin == f"hub:{folder}:validation" and revision  # with the revision read (a folder: its files' hash)


@pytest.mark.parametrize("case,message", [
    ("missing column", r"dev.parquet: row 1: no field 'text' \(fields: sentence, label\)"),
    ("unknown label", r"hub:.*hubdata:validation: row 4: label 'maybe' in field 'label' is not one of the declared "
                      r"labels \['no', 'yes'\]"),
    ("unknown split", r"hub:.*hubdata:dev: cannot load split 'dev' of hub dataset"),
    ("bom csv", None),
    ("header-only csv", r"dev.csv: no rows \(only a header, or an empty file\)"),
])
def test_bad_data_is_named_before_any_model_loads(tmp_path, data_dir, case, message):
    folder = tmp_path / "hubdata"
    folder.mkdir()
    words = ["no", "yes", "no", "maybe"]  # string labels, one of them undeclared
    datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": words[:2] * 2}).to_parquet(
        str(folder / "train.parquet"))
    datasets.Dataset.from_dict({"text": ["a", "b", "c", "d"], "label": words}).to_parquet(
        str(folder / "validation.parquet"))
    datasets.Dataset.from_dict(_rows(20)).to_parquet(str(tmp_path / "train.parquet"))
    datasets.Dataset.from_dict({"sentence": ["a", "b"], "label": [0, 1]}).to_parquet(str(tmp_path / "dev.parquet"))
    csv_rows = "".join(f"sentence {i},{LABELS[i % 2]}\n" for i in range(20))
    (tmp_path / "train.csv").write_text("\ufefftext,label\n" + csv_rows, encoding="utf-8")  # as Excel saves it
    (tmp_path / "dev.csv").write_text("text,label\n")
    task = {"missing column": _task("train.parquet", "dev.parquet", labels="[0, 1]"),
            "unknown label": _task("train", "validation", f", hub: {folder}"),
            "unknown split": _task("train", "dev", f", hub: {folder}"),
            "bom csv": _task("train.csv", "train.csv"),
            "header-only csv": _task("train.csv", "dev.csv")}[case]
    result = _run(tmp_path, data_dir, _config("no/such-model", task, seeds=1), "--dry-run")
    if message is None:  # the byte-order mark is not part of the first column's name
        assert result.exit_code == 0, result.output
        return
    result = _run(tmp_path, data_dir, _config("no/such-model", task, seeds=1))
    assert result.exit_code == 2, result.output
    assert pytest.importorskip("re").search(message, " ".join(result.output.split())), result.output
