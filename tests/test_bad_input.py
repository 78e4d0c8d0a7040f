"""Bad input that used to end in a traceback or a silently wrong result: each now a clear message."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from adaptbench.config.expand import load_sweep
from adaptbench.errors import ConfigError, DataError
from adaptbench.store.records import read_record
from adaptbench.report.pages import spreadsheet_safe
from adaptbench.store.results import read_results
from adaptbench.data.formats import read_hans
from adaptbench.data.schema import DatasetDef, LabelScheme
from adaptbench.data.sources import Split, read_jsonl, to_examples

from .conftest import with_settings, write_config
from .test_config import BASE


@pytest.mark.parametrize("text,match", [
    (with_settings(BASE, "name: ..\n"), r"name: .*would put the results in the output folder itself or above it"),
    (with_settings(BASE, "name: .\n"), r"name: .*would put the results"),
    (BASE.replace("data_seeds: 3", "data_seeds: [-1]"), r"data_seeds\[0\]: Input should be greater than or equal to 0"),
])
def test_names_and_seeds(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_sweep(write_config(tmp_path, text))


def test_files_that_are_not_utf8_name_the_line(tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"sweep.yaml: line 8 is not UTF-8 text \(byte 0xe9 at column 6\)"):
        load_sweep(str(config))
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"text": "ok"}\n{"text": "na\xefve"}\n')
    with pytest.raises(DataError, match=r"rows.jsonl: line 2 is not UTF-8 text \(byte 0xef at column 13\)"):
        read_jsonl(str(data))


def test_malformed_hans_rows(tmp_path):
    path = tmp_path / "hans.jsonl"
    path.write_text(json.dumps({"sentence1": "a", "sentence2": "b", "gold_label": "entailment"}) + "\n"
                    + json.dumps({"sentence1": "a", "gold_label": "entailment"}) + "\n")
    with pytest.raises(DataError, match=r"hans.jsonl: row 2: no text field 'sentence2'"):
        read_hans(str(path))
    path.write_text('{"sentence1": "a", \n')
    with pytest.raises(DataError, match=r"hans.jsonl: line 1: not valid JSON"):
        read_hans(str(path))


@pytest.mark.parametrize("idx,match", [
    (["3", "x"], r"d.jsonl: row 2: idx 'x' is not an integer"),
    ([4, 4], r"d.jsonl: row 2: idx 4 is also the idx of row 1"),
])
def test_idx_must_be_unique_integers(idx, match):
    dataset = DatasetDef("d", ("text",), ("no", "yes"), ("train",))
    rows = tuple({"text": "t", "label": 0, "idx": i} for i in idx)
    with pytest.raises(DataError, match=match):
        to_examples(Split(rows, "d.jsonl"), dataset, LabelScheme(("no", "yes"), (0, 1), "s"))


def test_a_result_that_is_json_but_not_a_record(tmp_path):
    run = tmp_path / "t" / "runs" / "abc"
    run.mkdir(parents=True)
    (run / "result.json").write_text("[1, 2]\n")
    assert read_record(str(tmp_path / "t"), "abc") is None  # the run is redone, not a crash
    problems = read_results(str(tmp_path / "t")).problems
    assert any("not a result record (a JSON list)" in p for p in problems)


def test_csv_cells_a_spreadsheet_would_run_are_escaped():
    df = pd.DataFrame({"model": ["=HYPERLINK(\"x\")", "+1", "@cmd", "-x", "opt"], "accuracy": [-0.5, 1, 2, 3, 4]})
    safe = spreadsheet_safe(df)
    assert list(safe["model"]) == ["'=HYPERLINK(\"x\")", "'+1", "'@cmd", "'-x", "opt"]
    assert list(safe["accuracy"]) == [-0.5, 1, 2, 3, 4]


def test_a_full_disk_stops_the_sweep_with_the_path_and_it_resumes(tmp_path, data_dir, tiny_models, monkeypatch):
    """ENOSPC while writing a record: a clear error naming the file, nothing half-written, no temp file;
    the same command completes the sweep once there is space again."""
    import errno
    import os

    from adaptbench.store import records

    from .test_run import _config, _records, _run

    real_replace = os.replace

    def full_disk(src, dst):
        if dst.endswith(records.RESULT):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(records.os, "replace", full_disk)
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], seeds=1))
    assert result.exit_code == 2 and "Traceback" not in result.output
    text = " ".join(result.output.split())
    assert "cannot write " in text and "result.json: No space left on device; nothing was half-written" in text
    sweep = tmp_path / "results" / "t"
    leftovers = [p for p in sweep.rglob("*") if p.name.startswith(records.TMP_PREFIX)]
    assert leftovers == [] and not list(sweep.rglob("result.json"))
    monkeypatch.setattr(records.os, "replace", real_replace)
    assert _run(tmp_path, data_dir, _config(tiny_models["llama"], seeds=1)).exit_code == 0
    assert [r["status"] for r in _records(tmp_path)] == ["ok"]


def test_two_verbalizer_words_of_one_token_stop_the_sweep_before_a_model_loads(tmp_path, data_dir, tiny_models,
                                                                               monkeypatch):
    """A tokenizer that lowercases makes " Yes" and " yes" one token: exit status 2, the field and the model
    named, and no model loaded (the check reads the tokenizer alone)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adaptbench.models import loading as model_loading

    from .test_run import _config, _run

    words = ["answer", ":", "yes", "no", "x"]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", "[PAD]", *words])}, unk_token="[UNK]"))
    raw.normalizer, raw.pre_tokenizer = normalizers.Lowercase(), pre_tokenizers.Whitespace()
    folder = tmp_path / "lowercase-tokenizer"
    PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", pad_token="[PAD]").save_pretrained(folder)
    loaded = []
    monkeypatch.setattr(model_loading, "load_model", lambda *a, **k: loaded.append(a) or 1 / 0)
    extra = 'prompt: {verbalizer: [" Yes", " yes"]}\n'
    config = _config(f"{{name: {tiny_models['llama']}, tokenizer: {folder}}}", extra, seeds=1)
    result = _run(tmp_path, data_dir, config)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    text = " ".join(result.output.split())
    assert "prompt.verbalizer for model" in text and "map to the same token" in text
    assert loaded == []
