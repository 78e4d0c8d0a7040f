"""Prompt presets render as the reference study's formats; bad patterns and verbalizers are rejected."""

from __future__ import annotations

import pytest

from adaptbench.config.schema import PromptSpec
from adaptbench.errors import PromptError
from adaptbench.prompts.prompt import Prompt, PromptEncoder, preset
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data import get_task
from adaptbench.data.schema import Example

PAIR = Example("A man sleeps.", "A man is awake.", 1, 0)
SINGLE = Example("The cat sat.", None, 1, 0)


@pytest.mark.parametrize("name,expected_query,expected_demo", [
    ("minimal", "A man sleeps. A man is awake. ?", "A man sleeps. A man is awake. ? No\n\n"),
    ("gpt-3", "A man sleeps. question: A man is awake. Yes or No? answer:",
     "A man sleeps. question: A man is awake. Yes or No? answer: No\n\n"),
    ("eval-harness", "A man sleeps. \nQuestion: A man is awake. True or False?\nAnswer:",
     "A man sleeps. \nQuestion: A man is awake. True or False?\nAnswer: False\n\n"),
])
def test_nli_presets(name, expected_query, expected_demo):
    prompt = resolve_prompt(PromptSpec(preset=name), get_task("rte"))
    assert prompt.query(PAIR) == expected_query
    assert prompt.demonstration(PAIR) == expected_demo


def test_cola_and_qqp_presets():
    cola = resolve_prompt(PromptSpec(), get_task("cola"))
    assert cola.demonstration(SINGLE) == "The cat sat. ? Yes "  # label 1 = acceptable -> " Yes", space-separated
    qqp = resolve_prompt(PromptSpec(preset="eval-harness"), get_task("qqp"))
    assert qqp.query(PAIR).endswith("Question: Do both questions ask the same thing? Answer:")
    assert qqp.verbalizer == (" No", " Yes")


def test_context_with_instruction():
    prompt = Prompt("{text1} {text2} ?", "", "\n\n", (" Yes", " No"), instruction="Does the first entail the second?")
    assert prompt.context([PAIR, PAIR]) == ("Does the first entail the second?\n\n"
                                           + "A man sleeps. A man is awake. ? No\n\n" * 2)


def test_preset_missing_for_family():
    with pytest.raises(PromptError, match="no format for paraphrase tasks; presets for paraphrase: minimal, eval-harness"):
        preset("gpt-3", "paraphrase", 2)
    with pytest.raises(PromptError, match="unknown prompt preset"):
        preset("fancy", "nli", 2)


@pytest.mark.parametrize("spec,match", [
    (PromptSpec(pattern="{text1} {premise} ?"), r"uses \['premise'\]"),
    (PromptSpec(pattern="{text1} ?"), r"must use exactly \['text1', 'text2'\]"),
    (PromptSpec(pattern="{text1 ?"), "not a valid pattern"),
    (PromptSpec(verbalizer=[" Yes"]), "1 words for 2 labels"),
    (PromptSpec(verbalizer={"entailment": " Yes", "contradiction": " No"}), r"unknown: \['contradiction'\]"),
    (PromptSpec(verbalizer=[" Yes", " Yes"]), "must differ"),
    (PromptSpec(target_prefix=" answer: "), "two spaces"),
])
def test_bad_prompts(spec, match):
    with pytest.raises(PromptError, match=match):
        resolve_prompt(spec, get_task("rte"))


def test_verbalizer_by_label_name():
    prompt = resolve_prompt(PromptSpec(verbalizer={"not_entailment": " false", "entailment": " true"}), get_task("rte"))
    assert prompt.verbalizer == (" true", " false")


def test_multi_token_verbalizer_names_its_pieces(tokenizer):
    prompt = Prompt("{text1} {text2} ?", "", "\n\n", (" Yes", " Nevertheless"))
    with pytest.raises(PromptError) as e:
        PromptEncoder(tokenizer, prompt, ("entailment", "not_entailment"))
    msg = str(e.value)
    assert "' Nevertheless'" in msg and "not_entailment" in msg and "not exactly one token" in msg
    pieces = tokenizer.convert_ids_to_tokens(tokenizer(" Nevertheless", add_special_tokens=False)["input_ids"])
    assert str(pieces) in msg


def test_encoder_start_tokens_and_verbalizers(tokenizer):
    prompt = resolve_prompt(PromptSpec(), get_task("rte"))
    enc = PromptEncoder(tokenizer, prompt, ("entailment", "not_entailment"))
    bos = tokenizer.bos_token_id
    assert enc.start_ids == [bos]
    ids = enc.encode(enc.context_text([PAIR]))
    assert ids[0] == bos and ids.count(bos) == 1
    assert enc.query_ids(PAIR)[0] == bos
    assert tokenizer.convert_ids_to_tokens(enc.label_token_ids) == ["ĠYes", "ĠNo"]
    assert enc.icl_inputs([], [PAIR]) == ([], [enc.query_ids(PAIR)])
