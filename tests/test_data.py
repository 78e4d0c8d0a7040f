"""Loaders read every shared dataset, in every format, with the right rows and label codings."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from adaptbench.errors import DataError
from adaptbench.data import DATASETS, EVAL_SETS, TASKS, eval_examples, get_eval_set, get_task, load_split, stratified_subsample, to_examples, train_pool
from adaptbench.data.registry import MNLI, QQP, _mnli_tsv, _qqp_tsv

# dataset, split -> rows and label counts in the raw (hub) coding, from ../shared/data/README.md and SOURCES.md
EXPECTED = {
    ("rte", "train"): (2490, {0: 1249, 1: 1241}),
    ("rte", "validation"): (277, {0: 146, 1: 131}),
    ("mnli", "train"): (9999, None),
    ("mnli", "validation_matched"): (9815, {0: 3479, 1: 3123, 2: 3213}),
    ("qqp", "train"): (8999, None),
    ("qqp", "validation"): (1000, None),
    ("cola", "train"): (8551, {1: 6023, 0: 2528}),
    ("cola", "validation"): (1043, {1: 721, 0: 322}),
    ("cola_ood", "validation"): (516, None),
    ("hans", "validation"): (30000, {0: 15000, 1: 15000}),
    ("paws_qqp", "validation"): (677, {0: 486, 1: 191}),
}


@pytest.mark.parametrize("dataset,split", sorted(EXPECTED))
def test_local_jsonl_rows_and_labels(data_dir, dataset, split):
    rows = load_split(DATASETS[dataset], split, data_dir, "local").rows
    n, counts = EXPECTED[(dataset, split)]
    assert len(rows) == n
    if counts:
        assert Counter(r["label"] for r in rows) == counts
    fields = DATASETS[dataset].fields
    assert all(isinstance(r[f], str) for r in rows for f in fields)


@pytest.mark.parametrize("dataset,split", [("rte", "train"), ("rte", "validation"), ("cola", "train"),
                                           ("cola", "validation"), ("paws_qqp", "validation"),
                                           ("cola_ood", "validation")])
def test_original_files_equal_normalised_copies(data_dir, dataset, split):
    """GLUE TSVs (and the reference study's PAWS/CoLA-OOD TSVs) read to exactly the JSONL rows."""
    d = DATASETS[dataset]
    original = load_split(d, split, data_dir, "original")
    local = load_split(d, split, data_dir, "local")
    assert original.origin.endswith(".tsv")
    key = lambda r: (tuple(r[f] for f in d.fields), r["label"])  # noqa: E731
    assert [key(r) for r in original.rows] == [key(r) for r in local.rows]


def test_hans_original_jsonl_matches_labels_and_heuristics(data_dir):
    original = load_split(DATASETS["hans"], "validation", data_dir, "original").rows
    local = load_split(DATASETS["hans"], "validation", data_dir, "local").rows
    key = lambda r: (r["premise"], r["hypothesis"], r["label"], r["heuristic"])  # noqa: E731
    assert sorted(map(key, original)) == sorted(map(key, local))


def test_mnli_dev_matched_from_mccoy_copy(data_dir):
    rows = load_split(MNLI, "validation_matched", data_dir, "original").rows
    assert len(rows) == 9815
    assert rows[0]["premise"] == "The new rights are nice enough" and rows[0]["label"] == 1  # neutral


def test_glue_mnli_and_qqp_train_format(data_dir):
    """The GLUE train-format readers, on the LM-BFF splits (full GLUE rows) shipped in original/."""
    base = Path(data_dir) / "original"
    mnli = _mnli_tsv(str(base / "mnli/lmbff_k-shot/16-13/train.tsv"))
    assert len(mnli) == 48 and Counter(r["label"] for r in mnli) == {0: 16, 1: 16, 2: 16}
    assert mnli[0]["premise"].startswith("Price caps may sound")
    qqp = _qqp_tsv(str(base / "qqp/lmbff_k-shot/16-13/train.tsv"))
    assert len(qqp) == 32 and set(Counter(r["label"] for r in qqp).values()) == {16}
    assert set(qqp[0]) == {"question1", "question2", "label", "idx"}


def test_mnli_label_schemes(data_dir):
    """mnli: neutral removed, contradiction -> 1; mnli-original: neutral merged into 1 (reference study)."""
    raw = Counter(r["label"] for r in load_split(MNLI, "train", data_dir).rows)
    binary = Counter(e.label for e in train_pool(get_task("mnli"), data_dir))
    merged = Counter(e.label for e in train_pool(get_task("mnli-original"), data_dir))
    assert binary == {0: raw[0], 1: raw[2]}
    assert merged == {0: raw[0], 1: raw[1] + raw[2]}


def test_label_spaces_line_up():
    hans = EVAL_SETS["hans"].labels
    for task in ("rte", "mnli", "mnli-original"):
        labels = TASKS[task].labels
        assert labels.space == hans.space
        assert labels.names[0] == hans.names[0] == "entailment"  # id 0 means entailment everywhere
    assert TASKS["rte"].labels.names[1] == "not_entailment" and hans.names[1] == "non_entailment"
    assert TASKS["mnli"].labels.names[1] == "contradiction"
    assert EVAL_SETS["paws-qqp"].labels.space == TASKS["qqp"].labels.space
    assert EVAL_SETS["cola-ood"].labels.space == TASKS["cola"].labels.space


def test_misaligned_eval_set_is_rejected():
    with pytest.raises(DataError, match="do not line up"):
        get_eval_set("paws-qqp", get_task("rte"))


def test_hans_default_slice_and_filters(data_dir):
    hans = EVAL_SETS["hans"]
    default, _ = eval_examples(hans, data_dir)
    assert len(default) == 10000 and {e.get("heuristic") for e in default} == {"lexical_overlap"}
    assert Counter(e.label for e in default) == {0: 5000, 1: 5000}
    every, _ = eval_examples(hans, data_dir, where=())
    assert len(every) == 30000
    two, _ = eval_examples(hans, data_dir, where=(("heuristic", ("subsequence", "constituent")),))
    assert len(two) == 20000


def test_stratified_subsample_keeps_proportions_and_seed(data_dir):
    rows, _ = eval_examples(EVAL_SETS["paws-qqp"], data_dir)  # 486 / 191
    a = stratified_subsample(rows, 100, seed=0)
    assert len(a) == 100 and Counter(e.label for e in a) == {0: 72, 1: 28}
    assert [e.idx for e in a] == sorted(e.idx for e in a)  # original order kept
    assert [e.idx for e in stratified_subsample(rows, 100, seed=0)] == [e.idx for e in a]
    assert [e.idx for e in stratified_subsample(rows, 100, seed=1)] != [e.idx for e in a]
    assert stratified_subsample(rows, None, 0) is rows


def _write_jsonl(path: Path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_bad_rows_are_reported_with_file_and_row(tmp_path):
    rte = DATASETS["rte"]
    _write_jsonl(tmp_path / "rte" / "train.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 0},
                                                    {"sentence1": "a", "label": 1}])
    with pytest.raises(DataError, match=r"rte/train.jsonl: row 2: text field 'sentence2' is missing"):
        to_examples(load_split(rte, "train", str(tmp_path), "local"), rte, TASKS["rte"].labels)
    _write_jsonl(tmp_path / "rte" / "validation.jsonl", [{"sentence1": "a", "sentence2": "b", "label": 7}])
    with pytest.raises(DataError, match=r"validation.jsonl: row 1: label 7 is not in the label set"):
        to_examples(load_split(rte, "validation", str(tmp_path), "local"), rte, TASKS["rte"].labels)


def test_empty_split_and_bad_json(tmp_path):
    cola = DATASETS["cola"]
    _write_jsonl(tmp_path / "cola" / "train.jsonl", [])
    with pytest.raises(DataError, match="empty split"):
        to_examples(load_split(cola, "train", str(tmp_path), "local"), cola, TASKS["cola"].labels)
    (tmp_path / "cola" / "validation.jsonl").write_text('{"sentence": "ok", "label": 1}\n{not json\n')
    with pytest.raises(DataError, match=r"validation.jsonl: line 2: not valid JSON"):
        load_split(cola, "validation", str(tmp_path), "local")


def test_unknown_task_lists_known_ones():
    with pytest.raises(DataError, match=r"unknown task 'sst2'.*rte, mnli"):
        get_task("sst2")


def test_missing_data_names_every_place_tried(tmp_path, monkeypatch, no_hub_cache):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as e:
        load_split(QQP, "validation", str(tmp_path), "auto")
    msg = str(e.value)
    assert "qqp/validation.jsonl" in msg and "QQP/dev.tsv" in msg and "hub nyu-mll/glue" in msg
    with pytest.raises(DataError, match="Get it from: PAWS-QQP"):
        load_split(DATASETS["paws_qqp"], "validation", str(tmp_path), "auto")


@pytest.fixture
def no_hub_cache():
    from adaptbench.data.sources import _read_hub

    _read_hub.cache_clear()
    yield
    _read_hub.cache_clear()


def test_hub_path_uses_datasets_with_hub_names(monkeypatch, no_hub_cache):
    """The hub path is thin: datasets.load_dataset(path, config, split=...) rows are used as they are."""
    from adaptbench.data import sources

    calls = []

    def fake_load(path, config, split, revision=None):
        calls.append((path, config, split))
        return [{"sentence1": "A man sleeps.", "sentence2": "A man is awake.", "label": 1, "idx": 0}], "c0ffee" * 6

    monkeypatch.setattr(sources, "load_hub_split", fake_load)
    split = load_split(DATASETS["rte"], "validation", None, "hub")
    assert calls == [("nyu-mll/glue", "rte", "validation")]
    assert split.origin == "hub:nyu-mll/glue/rte@" + "c0ffee" * 6  # the commit the branch resolved to
    ex = to_examples(split, DATASETS["rte"], TASKS["rte"].labels)
    assert ex[0].text2 == "A man is awake." and ex[0].label == 1


def test_user_task_from_csv_tsv_jsonl(tmp_path):
    from adaptbench.data import build_user_task

    (tmp_path / "train.csv").write_text('review,stars\n"Great, really great",pos\nAwful,neg\nFine,pos\n')
    (tmp_path / "dev.tsv").write_text('review\tstars\nGood "quoted" thing\tpos\nBad\tneg\n')
    _write_jsonl(tmp_path / "ood.jsonl", [{"review": "Meh", "stars": "neg"}])
    task, extra = build_user_task("sentiment", {"train": "train.csv", "validation": "dev.tsv"}, ["review"], "stars",
                                  ["neg", "pos"], {"amazon": "ood.jsonl"}, str(tmp_path))
    pool = train_pool(task)
    assert [(e.text1, e.label) for e in pool] == [("Great, really great", 1), ("Awful", 0), ("Fine", 1)]
    dev, origin = eval_examples(task.validation)
    assert dev[0].text1 == 'Good "quoted" thing' and origin.endswith("dev.tsv")
    ood, _ = eval_examples(extra["amazon"])
    assert ood[0].label == 0 and ood[0].text2 is None


def test_user_task_bad_label_and_missing_column(tmp_path):
    from adaptbench.data import build_user_task

    (tmp_path / "train.csv").write_text("review,stars\nGreat,pos\nAwful,meh\n")
    (tmp_path / "dev.csv").write_text("text,stars\nGood,pos\n")
    task, _ = build_user_task("s", {"train": "train.csv", "validation": "dev.csv"}, ["review"], "stars",
                              ["neg", "pos"], {}, str(tmp_path))
    with pytest.raises(DataError, match=r"train.csv: line 3: label 'meh' in field 'stars' is not one of"):
        train_pool(task)
    with pytest.raises(DataError, match=r"dev.csv: line 2: no field 'review'"):
        eval_examples(task.validation)
