"""Held-out replies judged by what they do: behaviour checks, QA answer scores, shares with intervals."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from adaptbench.cli.app import app
from adaptbench.data.contexts import InputSet, read_input_set
from adaptbench.errors import ConfigError, DataError
from adaptbench.measure.shares import bootstrap_interval, mean, share, wilson_interval
from adaptbench.methods.cd.settings import CDSettings
from adaptbench.models.loading import load_model
from adaptbench.report.pages import make_report
from adaptbench.scoring.answers import answer_line, contains, exact_match, normalize, score, token_f1
from adaptbench.scoring.checks import Check, Judge

from .test_cd import sharp_llama  # noqa: F401  (fixture)
from .test_cd_sequence import CONTEXT, _config
from .test_run import _records, _run


def test_squad_normalisation_and_scores():
    """SQuAD's definitions: lower case, punctuation and articles dropped; best over several gold answers."""
    assert normalize("The  Eiffel-Tower, in PARIS!") == "eiffeltower in paris"
    assert exact_match("the Paris.", ["London", "paris"]) and not exact_match("Paris France", ["paris"])
    assert token_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(2 / 3)  # P 1, R 1/2
    assert token_f1("cat cat", ["cat"]) == pytest.approx(2 / 3)  # bags: one cat in common, P 1/2, R 1
    assert token_f1("dog", ["cat", "a dog"]) == 1.0 and token_f1("", ["cat"]) == 0.0
    assert contains("It is Paris, France.", ["paris"]) and not contains("Parisian food", ["paris"])
    assert answer_line("\n  \n Paris.\nThe capital.") == " Paris."
    assert score(" Paris.\nIt is big", ["paris"]) == {"exact_match": 1.0, "contains": 1.0, "f1": 1.0}
    assert score("Rome, not Paris", ["paris"]) == {"exact_match": 0.0, "contains": 1.0, "f1": pytest.approx(0.5)}


def test_shares_carry_n_and_a_95_interval():
    z = 1.959963984540054  # Wilson's score interval, from its definition
    for k, n in ((8, 10), (0, 7), (30, 30)):
        p = k / n
        centre, half = (p + z * z / (2 * n)) / (1 + z * z / n), z / (1 + z * z / n) * math.sqrt(
            p * (1 - p) / n + z * z / (4 * n * n))
        assert wilson_interval(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert share([True, False, True, True]) == {"value": 0.75, "n": 4, "k": 3, "ci95": list(wilson_interval(3, 4)),
                                                "interval": "wilson"}
    assert share([])["value"] is None and share([])["ci95"] is None
    assert bootstrap_interval([0.5] * 5) == (0.5, 0.5)
    lo, hi = bootstrap_interval([0.0, 1.0] * 20)
    assert lo < 0.5 < hi and hi - lo < 0.4 and mean([0.0, 1.0])["value"] == 0.5


def test_each_check_kind_judges_by_its_definition(tmp_path):
    (tmp_path / "mychecks.py").write_text("def pirate(reply):\n    return reply.startswith('Arr')\n"
                                          "def bad(reply):\n    return 'yes'\n")
    checks = [Check(contains="ahoy"), Check(not_contains="As an AI", ignore_case=True), Check(regex=r"^Arr\b"),
              Check(lowercase=True), Check(max_words=3), Check(call="mychecks.pirate", name="pirate"),
              Check(not_regex=r"\bhuman\b", ignore_case=True)]
    judge = Judge(checks, str(tmp_path))
    assert judge.results("Arr ahoy matey") == {"contains 'ahoy'": True, "not_contains 'As an AI'": True,
                                               "regex '^Arr\\\\b'": True, "lowercase": False, "max_words 3": True,
                                               "pirate": True, "not_regex '\\\\bhuman\\\\b'": True}
    assert judge.results("as an ai, ahoy there friend") == {
        "contains 'ahoy'": True, "not_contains 'As an AI'": False, "regex '^Arr\\\\b'": False, "lowercase": True,
        "max_words 3": False, "pirate": False, "not_regex '\\\\bhuman\\\\b'": True}
    assert not judge.results("I am HUMAN")["not_regex '\\\\bhuman\\\\b'"]
    with pytest.raises(DataError, match=r"cd.checks\[0\]: call 'mychecks.bad' returned str"):
        Judge([Check(call="mychecks:bad")], str(tmp_path)).results("x")


@pytest.mark.parametrize("checks,message", [
    ([{"regex": "(unclosed"}], "checks.0"),
    ([{"regex": "(unclosed"}], "does not compile"),
    ([{"contains": "a", "max_words": 3}], "exactly one of"),
    ([{}], "this one has none"),
    ([{"max_words": 0}], "checks.0.max_words"),
    ([{"lowercase": True, "ignore_case": True}], "ignore_case applies to"),
])
def test_a_bad_check_is_a_config_error_naming_it(checks, message):
    with pytest.raises(ValueError, match=message):
        CDSettings.model_validate({"target": "sequence", "checks": checks})


def test_a_call_that_cannot_be_imported_names_the_check(tmp_path):
    with pytest.raises(ConfigError, match=r"cd.checks\[1\]: call 'no_such_module.f': cannot import 'no_such_module'"):
        Judge([Check(contains="x"), Check(call="no_such_module.f")], str(tmp_path))
    (tmp_path / "m.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="'m' has no function 'f'"):
        Judge([Check(call="m.f")], str(tmp_path))
    with pytest.raises(ConfigError, match="two checks have the label \"contains 'x'\""):
        Judge([Check(contains="x"), Check(contains="x")])


def test_a_question_file_gives_inputs_and_gold_answers(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "Q1?", "answer": "a"}\n{"question": "Q2?", "answer": ["b", "c"]}\n')
    assert read_input_set(str(path)) == InputSet(["Q1?", "Q2?"], [["a"], ["b", "c"]], "qa")
    path.write_text('{"question": "Q1?", "answer": "a"}\n\n{"question": "Q2?"}\n')
    with pytest.raises(DataError, match="qa.jsonl line 3: missing key 'answer'"):
        read_input_set(str(path))
    path.write_text('{"question": "Q1?", "answer": []}\n')
    with pytest.raises(DataError, match="qa.jsonl line 1: 'answer' must be a non-empty string"):
        read_input_set(str(path))
    path.write_text('{"question": "Q1?", "answer": "a"}\n{"text": "Q2?"}\n')
    with pytest.raises(DataError, match="qa.jsonl line 2: missing key 'question'"):
        read_input_set(str(path))


QUESTIONS = [("When did the committee meet?", ["Tuesday", "on Tuesday"]), ("What must a report name?", ["its sources"]),
             ("What is better than a wrong report?", ["a late report"]), ("Are numbers assumed?", ["no"]),
             ("Who met?", ["the committee"]), ("What is worse than a late report?", ["a wrong one"])]


def test_held_out_replies_are_judged_for_base_teacher_and_student(tmp_path, data_dir, sharp_llama):  # noqa: F811
    """A question file and checks: each model's greedy reply (the teacher reading context + question as one
    text, the base and student the question alone) is judged; recomputed here from the definitions, every
    reply generated again without any cache."""
    (tmp_path / "context.txt").write_text(CONTEXT)
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    (tmp_path / "rules.py").write_text("def short(reply):\n    return len(reply) < 30\n")
    cd = ("context: 'file:context.txt', inputs: qa.jsonl, held_out: 3, generations: 0, max_new_tokens: 3, "
          "reply_tokens: 7, checks: [{contains: ' the'}, {call: 'rules.short', name: short}, {max_words: 4}]")
    result = _run(tmp_path, data_dir, _config(sharp_llama, cd).replace("max_steps: 40", "max_steps: 2"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    info = rec["method_info"]
    judged = info["judged"]
    held = info["split"]["held_out_indices"]
    assert judged["n"] == 3 and judged["reply_tokens"] == 7 and len(judged["replies"]) == 3
    loaded = load_model(sharp_llama)
    tok = loaded.tokenizer

    def reply(ids):
        with torch.inference_mode():
            out = loaded.model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True).strip()

    for row, i in zip(judged["replies"], held):
        question, gold = QUESTIONS[i]
        assert row["teacher"] == reply(tok(CONTEXT + "\n\n" + question)["input_ids"])
        assert row["base"] == reply(tok(question)["input_ids"]) and row["gold"] == gold
        assert tok(row["prompt"], add_special_tokens=False)["input_ids"] == tok(question)["input_ids"]  # start token kept
        for model in ("base", "teacher", "student"):
            text = row[model]
            verdicts = {"contains ' the'": " the" in text, "short": len(text) < 30, "max_words 4": len(text.split()) <= 4}
            assert row["failed"][model] == [k for k, ok in verdicts.items() if not ok]
            assert row["scores"][model] == score(text, gold)
    # the measured reply KL reads the first max_new_tokens of the same greedy replies
    assert all(r.strip() and row["teacher"].startswith(r.strip()) for r, row in zip(info["heldout_replies"],
                                                                                      judged["replies"]))
    for model in ("base", "teacher", "student"):
        passed = [not row["failed"][model] for row in judged["replies"]]
        assert judged["checks"]["all checks"][model] == share(passed)
        assert judged["answers"]["f1"][model]["value"] == pytest.approx(
            sum(row["scores"][model]["f1"] for row in judged["replies"]) / 3)
    passed = judged["checks"]["all checks"]
    line = f"checks student {passed['student']['k']}/3 teacher {passed['teacher']['k']}/3 base {passed['base']['k']}/3"
    assert line in result.output  # the console line
    shown = CliRunner().invoke(app, ["show", rec["run_id"], "--results-dir", str(tmp_path / "results" / "t")],
                               env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "held-out replies judged (3" in shown.output and "all checks" in shown.output
    low, high = passed["student"]["ci95"]
    assert f"{passed['student']['value']:.0%} [{low:.0%}, {high:.0%}] ({passed['student']['k']}/3)" in shown.output
    report = make_report(str(tmp_path / "results" / "t"))
    page = (tmp_path / "results" / "t" / "report" / "report.html").read_text()
    md = (tmp_path / "results" / "t" / "report" / "summary.md").read_text()
    assert "Held-out replies judged" in md and "Held-out replies judged" in page
    assert report.summary.iloc[0]["checks_student"] == judged["checks"]["all checks"]["student"]["value"]


def _lcs(a: str, b: str) -> int:
    row = [0] * (len(b) + 1)
    for ch in a:
        prev = 0
        for j, other in enumerate(b, start=1):
            prev, row[j] = row[j], prev + 1 if ch == other else max(row[j], row[j - 1])
    return row[-1]


@pytest.mark.parametrize("reply,gold", [("return x + 1\nfoo", "    return x+1"), ("\n  for i in range(3):", "for i in range(3):"),
                                        ("print('a')", "assert y")])
def test_a_completed_line_is_scored_as_repobench_scores_it(reply, gold):
    """Exact match of the stripped first non-empty line; edit similarity = 2 LCS / (|a| + |b|) (indel ratio)."""
    line, target = answer_line(reply).strip(), gold.strip()
    got = score(reply, [gold], "code")
    assert got["exact_match"] == float(line == target)
    assert got["edit_similarity"] == pytest.approx(2 * _lcs(line, target) / (len(line) + len(target)))


CODE = '''import os


def read_config(path):
    """Read a config file."""
    with open(path) as f:
        text = f.read()
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip()
    return values


def write_config(path, values):
    lines = [f"{k} = {v}" for k, v in values.items()]
    with open(path, "w") as f:
        f.write("\\n".join(lines))
    return len(lines)
'''


def test_completion_points_and_a_code_run(tmp_path, data_dir, tiny_models):
    from adaptbench.data.code_lines import completion_points

    (tmp_path / "lib.py").write_text(CODE)
    points = completion_points(str(tmp_path / "lib.py"), prompt_lines=4, every=2)
    lines = CODE.split("\n")
    assert points.kind == "code" and len(points.texts) == len(points.answers) >= 4
    for text, gold, group in zip(points.texts, points.answers, points.groups):
        i = group["line"] - 1
        assert gold == [lines[i].strip()] and text == "\n".join(lines[max(0, i - 4):i]) + "\n"
        assert len(lines[i].strip()) >= 8 and not lines[i].lstrip().startswith("#")
    (tmp_path / "context.txt").write_text(CODE.replace("config", "settings"))
    cd = "context: 'file:context.txt', inputs: 'code:lib.py', held_out: 2, generations: 0, max_new_tokens: 2, reply_tokens: 6"
    result = _run(tmp_path, data_dir, _config(tiny_models["gpt2"], cd).replace("max_steps: 40", "max_steps: 1"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    judged = rec["method_info"]["judged"]
    assert judged["answer_kind"] == "code" and set(judged["answers"]) == {"exact_match", "edit_similarity"}
    assert "groups" not in judged and all("line" in r for r in judged["replies"])
    for model in ("base", "teacher", "student"):
        values = [r["scores"][model]["edit_similarity"] for r in judged["replies"]]
        assert judged["answers"]["edit_similarity"][model]["value"] == pytest.approx(sum(values) / len(values))
    assert rec["spec"]["resolved"]["files"]["cd.inputs"] == hashlib.sha256((tmp_path / "lib.py").read_bytes()).hexdigest()


def test_a_judged_reply_ends_before_the_next_turn():
    from adaptbench.methods.cd.judge import ReplyJudging

    plain = ReplyJudging(CDSettings(target="sequence"), None, None, plain_chat=True)
    assert plain.stop == ["\nUser:"] and plain.cut(" Arr, matey.\nUser: and you?\nAssistant: x") == "Arr, matey."
    text = ReplyJudging(CDSettings(target="sequence", reply_stop=["###", "\n\n"]), None, None, plain_chat=False)
    assert text.tokens == 64 and text.cut("a b\n\nc ### d") == "a b" and text.cut("no stop ") == "no stop"
