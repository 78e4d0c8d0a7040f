"""Self-study inputs: the model writes requests about chunks of the context; the teacher answers them."""

from __future__ import annotations

import copy
import json

import pytest

from adaptbench.methods.cd.self_study import SEED_PROMPTS, SelfStudySettings, held_out_count, plan
from adaptbench.methods.cd.settings import CDSettings
from adaptbench.store.results import read_results

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


def test_students_of_one_sweep_share_the_self_study_and_the_teacher_pass(tmp_path, data_dir, tiny_models):
    """trainable: [lora, cartridge]: the second student reads the first's requests and targets (same teacher
    key), counts their seconds, and gets what it would have computed alone; a changed shared file is not used."""
    cd = ("context: 'file:context.txt', inputs: self_study, held_out: 2, generations: 0, max_new_tokens: 3, "
          "self_study: {n: 4, chunk_tokens: [24, 48], max_request_tokens: 6, seed: 2}, "
          "generate: {n: 1, max_new_tokens: 4}, checks: [{max_words: 50}]")
    config = _config(tiny_models["llama"], cd).replace("max_steps: 40", "max_steps: 1")
    both, alone, output = tmp_path / "both", tmp_path / "alone", {}
    for folder, trainable in ((both, "[lora, cartridge]"), (alone, "cartridge")):
        folder.mkdir()
        (folder / "context.txt").write_text(CONTEXT)
        text = config.replace("trainable: full", f"trainable: {trainable}\ncartridge: {{num_virtual_tokens: 4}}")
        result = _run(folder, data_dir, text)
        assert result.exit_code == 0, result.output
        output[folder] = result.output
    first, second = _records(both)
    [single] = _records(alone)
    assert second["spec"]["trainable"] == "cartridge" and {r["status"] for r in (first, second, single)} == {"ok"}
    info, made = second["method_info"], first["method_info"]
    assert info["teacher_shared"]["run_id"] == first["run_id"] == info["self_study"]["shared_from"]
    assert "teacher_shared" not in made and "shared_from" not in made["self_study"]
    assert second["costs"]["teacher"]["extra"]["seconds_shared"] == info["teacher_shared"]["seconds"] > 0
    assert second["costs"]["self_study"]["extra"]["seconds_shared"] == round(first["costs"]["self_study"]["seconds"], 3)
    assert f"teacher pass shared with {first['run_id']}" in output[both] and "shared" not in output[alone]
    alone_info = single["method_info"]
    assert info["teacher_targets_sha256"] == made["teacher_targets_sha256"]  # the same file
    assert _tensors(info["teacher_targets"]) == _tensors(alone_info["teacher_targets"])  # what it would have made
    assert open(info["self_study"]["file"]).read() == open(alone_info["self_study"]["file"]).read()
    assert info["heldout"] == alone_info["heldout"] and info["judged"] == alone_info["judged"]
    assert second["run_id"] == single["run_id"]
    assert not read_results(str(both / "results")).problems  # shared/ is part of a sweep folder
    # a forced rerun of the run that published them measures anew: a run never reads its own
    result = _run(alone, data_dir, config.replace("trainable: full", "trainable: cartridge\n"
                                                  "cartridge: {num_virtual_tokens: 4}"), "--force")
    assert result.exit_code == 0 and "shared" not in result.output and "reused" not in result.output, result.output
    rerun = _records(alone)[-1]
    assert not {"teacher_shared", "teacher_reused"} & set(rerun["method_info"])
    assert not rerun["costs"]["self_study"].get("extra") and "shared_from" not in rerun["method_info"]["self_study"]
    # a shared file that no longer matches its hash is reported and not used: the teacher runs again
    [key] = list((both / "results" / "t" / "shared").iterdir())
    changed = (key / "teacher_targets.safetensors").read_bytes() + b"x"
    (key / "teacher_targets.safetensors").unlink()  # a hard link to the first run's file: not that one
    (key / "teacher_targets.safetensors").write_bytes(changed)
    with pytest.warns(UserWarning, match="does not match the SHA-256"):
        result = _run(both, data_dir, config.replace("trainable: full", "trainable: cartridge\n"
                                                     "cartridge: {num_virtual_tokens: 4}"), "--force")
    assert result.exit_code == 0, result.output
    again = _records(both)[-1]["method_info"]
    assert "teacher_shared" not in again and _tensors(again["teacher_targets"]) == _tensors(made["teacher_targets"])


def _tensors(path: str) -> dict:
    """A safetensors file's tensors as lists (its header's key order is not stable, so neither is its hash)."""
    from safetensors.torch import load_file

    return {k: v.tolist() for k, v in load_file(path).items()}
