"""Self-study inputs: the model writes requests about chunks of the context; the teacher answers them."""

from __future__ import annotations

import copy
import json

import pytest

from adaptbench.methods.cd.self_study import SEED_PROMPTS, SelfStudySettings, held_out_count, plan
from adaptbench.methods.cd.settings import CDSettings

from .test_cd_sequence import CONTEXT, _config
from .test_run import _records, _run


def test_plan_draws_seeded_chunks_inside_the_context():
    settings = SelfStudySettings(chunk_tokens=[8, 16], kinds=["question", "summary"], seed=3)
    a, b = plan(settings, list(range(40)), 50, 3), plan(settings, list(range(40)), 50, 3)
    assert a == b and a != plan(settings, list(range(40)), 50, 4)
    assert all(0 <= start and start + n <= 40 and n in (8, 16) for start, n, _ in a)
    assert {kind for _, _, kind in a} == {"question", "summary"} and {n for _, n, _ in a} == {8, 16}
    with pytest.raises(Exception, match="longer than the context"):
        plan(settings, list(range(6)), 1, 0)
    assert held_out_count(0.2, 40) == 10 and held_out_count(5, 40) == 5


@pytest.mark.parametrize("cd,message", [
    ({"inputs": "self_study", "context": "demonstrations"}, "self_study writes requests about a text context"),
    ({"self_study": {"n": 4}}, "cd.self_study applies to cd.inputs: self_study"),
    ({"inputs": "self_study", "context": "file:x.txt", "self_study": {"kinds": ["poem"]}}, "unknown self-study kind"),
])
def test_self_study_settings_are_checked(cd, message):
    with pytest.raises(ValueError, match=message):
        CDSettings.model_validate({"target": "sequence", **cd})


def test_a_file_alone_is_a_complete_distillation(tmp_path, data_dir, tiny_models):
    """cd.context: file + cd.inputs: self_study: requests written by the model (saved, their own cost phase),
    answered by the teacher (continuations distilled), held-out requests their own samples."""
    (tmp_path / "context.txt").write_text(CONTEXT)
    cd = ("context: 'file:context.txt', inputs: self_study, held_out: 2, generations: 0, max_new_tokens: 3, "
          "self_study: {n: 4, chunk_tokens: [24, 48], max_request_tokens: 6, seed: 2}, "
          "generate: {n: 1, max_new_tokens: 4}, checks: [{max_words: 50}]")
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], cd).replace("max_steps: 40", "max_steps: 1"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    study = info["self_study"]
    rows = [json.loads(line) for line in open(study["file"])]
    train = [r for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "held_out"]
    assert len(train) == study["requests"] <= 4 and len(held) == study["held_out_requests"] <= 2 and held
    assert all(r["kind"] in SEED_PROMPTS and r["text"] and "\n" not in r["text"] for r in rows)
    assert not {r["text"] for r in held} & {r["text"] for r in train} or len(train) < 4
    assert "self_study" in rec["costs"] and rec["costs"]["self_study"]["seconds"] > 0
    assert info["generated_inputs"] >= 1 and info["distill_inputs"] == len(train) + info["generated_inputs"]
    assert info["judged"]["n"] == len(held)
    assert [g["input"] for g in info["judged"]["replies"]] == [f"User: {r['text']}\n\nAssistant:" for r in held]


def test_requests_after_a_text_context_are_rendered_with_the_chat_template(tokenizer):
    """A template that refuses an empty conversation (SmolLM2's does) renders the request turn whole."""
    from adaptbench.data.contexts import ContextSource
    from adaptbench.methods.cd.context import user_turn_texts

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% if not messages %}{{ raise_exception('empty conversation') }}{% endif %}"
                         "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert user_turn_texts(ContextSource("file", "x.txt"), tok, ["What is it?"], template=True) == [
        "<|user|>What is it?<|end|><|assistant|>"]
    assert user_turn_texts(ContextSource("file", "x.txt"), tok, ["What is it?"]) == ["User: What is it?\n\nAssistant:"]
