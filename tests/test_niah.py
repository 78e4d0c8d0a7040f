"""Needle in a haystack: needles at their depths of real text, a context of the asked length, accuracy per depth."""

from __future__ import annotations

import pytest

from adaptbench.data.haystack import Needle, build_context, essay_files, haystack_text, insert_needles, make_needles
from adaptbench.errors import ConfigError, DataError
from adaptbench.prompts.prompt import Prompt, PromptEncoder

from adaptbench.report.pages import make_report

from .test_cd_sequence import _config
from .test_run import _records, _run

HAYSTACK = "One sentence here. Another one follows. A third sentence ends it. And the last one."


def test_needles_sit_at_their_depth_on_a_sentence_boundary():
    first, middle, last = (Needle("Oslo", "12345", 0.0), Needle("Lima", "55555", 0.5), Needle("Riga", "99999", 1.0))
    text = insert_needles(HAYSTACK, [middle, last, first])
    assert text.startswith(first.text) and text.endswith(last.text)
    at = text.index(middle.text)
    assert text[:at].endswith("Another one follows.")  # the sentence end at or before half the characters
    assert text.replace(first.text, "").replace(middle.text, "").replace(last.text, "") == HAYSTACK


def test_needles_are_seeded_and_distinct():
    a, b = make_needles(10, [0.0, 0.5], seed=3), make_needles(10, [0.0, 0.5], seed=3)
    assert a == b and len({n.place for n in a}) == 10 and [n.depth for n in a[:3]] == [0.0, 0.5, 0.0]
    assert all(len(n.number) == 5 for n in a) and a != make_needles(10, [0.0, 0.5], seed=4)
    with pytest.raises(ConfigError, match="at most 30 needles"):
        make_needles(31, [0.5], 0)


def test_the_essays_are_the_default_haystack(tokenizer):
    paths = essay_files()
    assert len(paths) == 49 and all(p.endswith(".txt") for p in paths)
    text = haystack_text()
    assert len(text) > 600_000
    enc = PromptEncoder(tokenizer, Prompt(""), ["yes", "no"])
    needles = make_needles(4, [0.0, 0.33, 0.66, 1.0], 0)
    context = build_context(enc, text, needles, 300)
    assert abs(len(enc.encode(context)) - 300) <= 4 and all(n.text in context for n in needles)
    with pytest.raises(ConfigError, match="leave"):
        build_context(enc, text, needles, 40)
    with pytest.raises(DataError, match="no such file or folder"):
        haystack_text("/no/such/haystack")


def test_a_haystack_run_scores_each_needle_question_by_depth(tmp_path, data_dir, tiny_models):
    """cd.context: niah with task: none: the questions are the inputs, held-out ones are answered by base,
    teacher and student and scored per depth; the context holds every needle and is the asked length."""
    cd = ("context: niah, context_tokens: 200, niah: {needles: 6, depths: [0.0, 1.0], seed: 1}, held_out: 4, "
          "generations: 0, max_new_tokens: 2, reply_tokens: 4")
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], cd).replace("max_steps: 40", "max_steps: 1"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    needles = info["niah"]["needles"]
    assert [n["depth"] for n in needles] == [0.0, 1.0] * 3 and abs(info["context_tokens"] - 200) <= 4
    judged = info["judged"]
    assert judged["n"] == 4 and set(judged["groups"]["depth"]) <= {"0.0", "1.0"}
    held = [needles[i] for i in info["split"]["held_out_indices"]]
    for row, needle in zip(judged["replies"], held):
        assert row["gold"] == [needle["number"]] and row["depth"] == needle["depth"]
        assert needle["place"] in row["input"]
    for depth, cells in judged["groups"]["depth"].items():
        rows = [r for r in judged["replies"] if str(r["depth"]) == depth]
        assert cells["contains"]["teacher"]["n"] == len(rows)
        assert cells["contains"]["teacher"]["k"] == sum(r["scores"]["teacher"]["contains"] == 1.0 for r in rows)
    report = make_report(str(tmp_path / "results" / "t"))
    assert any("needle in a haystack" in f or "niah" in f for f in report.files)
    page = (tmp_path / "results" / "t" / "report" / "report.html").read_text()
    assert "share of held-out needle questions" in page


def test_self_study_on_a_haystack_holds_out_every_needle_question(tmp_path, data_dir, tiny_models):
    cd = ("context: niah, context_tokens: 160, niah: {needles: 3, depths: [0.5]}, inputs: self_study, "
          "self_study: {n: 3, chunk_tokens: [32], max_request_tokens: 5}, generations: 0, max_new_tokens: 2, "
          "reply_tokens: 4, generate: false")
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], cd).replace("max_steps: 40", "max_steps: 1"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    info = rec["method_info"]
    assert info["self_study"]["held_out_requests"] == 0 and "split" not in info
    judged = info["judged"]
    assert judged["n"] == 3 and list(judged["groups"]["depth"]) == ["0.5"]
    for row, needle in zip(judged["replies"], info["niah"]["needles"]):
        assert row["input"] == f"User: What is the secret number of the {needle['place']} vault?\n\nAssistant:"
        assert row["gold"] == [needle["number"]]
