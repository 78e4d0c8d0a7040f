"""Context settings, text and chat files, input files, the held-out split and context cutting."""

from __future__ import annotations

import json

import pytest

from adaptbench.data.contexts import ContextSource, cut_to_tokens, parse_context_setting, plain_chat, read_chat, read_inputs, read_text_file, render_chat, split_inputs
from adaptbench.errors import ConfigError, DataError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "What is two plus two?"}]


def write(tmp_path, name, text, mode="w"):
    path = tmp_path / name
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


# --- cd.context settings ---------------------------------------------------------------------------

def test_parse_context_setting(tmp_path):
    assert parse_context_setting("demonstrations", "/cfg") == ContextSource("demonstrations", None)
    assert parse_context_setting("file:docs/a.txt", "/cfg") == ContextSource("file", "/cfg/docs/a.txt")
    assert parse_context_setting("chat:talk.jsonl", "/cfg") == ContextSource("chat", "/cfg/talk.jsonl")
    assert parse_context_setting("file:/abs/a.txt", "/cfg") == ContextSource("file", "/abs/a.txt")


@pytest.mark.parametrize("bad", ["demos", "url:http://x", "", None, 3, "file:", "chat:  "])
def test_unknown_context_setting_names_the_setting_and_forms(bad):
    with pytest.raises(ConfigError, match="cd.context") as e:
        parse_context_setting(bad, "/cfg")
    assert "PATH" in str(e.value)


# --- text files ------------------------------------------------------------------------------------

def test_read_text_file(tmp_path):
    path = write(tmp_path, "doc.txt", "line one\r\nline two\n")
    assert read_text_file(path, "cd.context") == "line one\nline two\n"
    bom = write(tmp_path, "bom.txt", b"\xef\xbb\xbfcaf\xc3\xa9", mode="wb")
    assert read_text_file(bom, "cd.context") == "café"


def test_read_text_file_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"cd.context: cannot read .*missing.txt"):
        read_text_file(str(tmp_path / "missing.txt"), "cd.context")
    with pytest.raises(DataError, match=r"empty.txt is empty"):
        read_text_file(write(tmp_path, "empty.txt", " \n\n\t\n"), "cd.context")
    bad = write(tmp_path, "latin1.txt", "ok\nstill ok\ncaf\xe9\n".encode("latin-1"), mode="wb")
    with pytest.raises(DataError, match=r"latin1.txt line 3: not UTF-8"):
        read_text_file(bad, "cd.context")
    with pytest.raises(DataError, match="cannot read"):
        read_text_file(str(tmp_path), "cd.context")  # a folder


# --- chat files ------------------------------------------------------------------------------------

def test_read_chat_skips_blank_lines(tmp_path):
    path = write(tmp_path, "chat.jsonl", jsonl(CHAT[:2]) + "\n   \n" + jsonl(CHAT[2:]))
    assert read_chat(path) == CHAT


@pytest.mark.parametrize("line, message", [
    ('{"role": "user", "content": "x"', "line 2: invalid JSON"),
    ('["user", "x"]', "line 2: expected a JSON object, got list"),
    ('{"role": "user"}', "line 2: missing key 'content'"),
    ('{"content": "x"}', "line 2: missing key 'role'"),
    ('{"role": "user", "content": "x", "name": "bob"}', "line 2: unexpected key 'name'"),
    ('{"role": "robot", "content": "x"}', "line 2: unknown role 'robot'"),
    ('{"role": "user", "content": 3}', "line 2: content must be a string, got int"),
])
def test_read_chat_errors_name_file_and_line(tmp_path, line, message):
    path = write(tmp_path, "chat.jsonl", json.dumps(CHAT[0]) + "\n" + line + "\n")
    with pytest.raises(DataError, match="chat.jsonl " + message.replace("[", r"\[")):
        read_chat(path)


def test_read_chat_empty_file(tmp_path):
    with pytest.raises(DataError, match="empty.jsonl is empty"):
        read_chat(write(tmp_path, "empty.jsonl", "\n\n"))


@pytest.fixture(scope="module")
def word_tokenizer():
    """A tiny word-level tokenizer built here (no chat template)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<s>", "</s>", "Be", "brief", "Hi", "there", "Hello", "What", "is", "two", "plus"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def test_render_chat_with_the_tokenizers_template(word_tokenizer):
    import copy

    tok = copy.deepcopy(word_tokenizer)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    text, how = render_chat(CHAT, tok)
    assert how == "chat_template"
    assert text == ("<|system|>Be brief.</s><|user|>Hi there</s><|assistant|>Hello</s>"
                    "<|user|>What is two plus two?</s>")


def test_render_chat_without_a_template_is_plain_text(word_tokenizer):
    assert not word_tokenizer.chat_template
    text, how = render_chat(CHAT, word_tokenizer)
    assert how == "plain"
    assert text == ("System: Be brief.\n\nUser: Hi there\n\nAssistant: Hello\n\n"
                    "User: What is two plus two?\n\n") == plain_chat(CHAT)


def test_a_template_that_refuses_the_chat_is_a_data_error(word_tokenizer):
    import copy

    tok = copy.deepcopy(word_tokenizer)
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                         "{{ raise_exception('System role not supported') }}{% endif %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(DataError, match="talk.jsonl: the tokenizer's chat template.*System role not supported"):
        render_chat(CHAT, tok, path="talk.jsonl")


# --- input files -----------------------------------------------------------------------------------

def test_read_inputs_text_field_jsonl(tmp_path):
    path = write(tmp_path, "in.jsonl", jsonl([{"text": "first", "id": 1}, {"text": "second"}]) + "\n")
    assert read_inputs(path) == ["first", "second"]


def test_read_inputs_chat_jsonl_takes_the_user_turns(tmp_path):
    assert read_inputs(write(tmp_path, "in.jsonl", jsonl(CHAT))) == ["Hi there", "What is two plus two?"]


def test_read_inputs_txt_paragraphs(tmp_path):
    text = "\n\nfirst paragraph\n  indented second line\n\n \n\nsecond\n\nthird\nend\n\n"
    assert read_inputs(write(tmp_path, "in.txt", text)) == [
        "first paragraph\n  indented second line", "second", "third\nend"]


@pytest.mark.parametrize("rows, message", [
    ([{"text": "a"}, {"txt": "b"}], "line 2: missing key 'text'"),
    ([{"text": "a"}, {"text": 5}], "line 2: 'text' must be a non-empty string"),
    ([{"text": "a"}, {"text": "  "}], "line 2: 'text' must be a non-empty string"),
    ([{"role": "user", "content": "a"}, {"role": "user", "content": "b", "x": 1}], "line 2: unexpected key 'x'"),
    ([{"txt": "a"}], "line 1: expected a 'text' field, a 'question' with its 'answer', a code 'prompt'"),
])
def test_read_inputs_errors_name_file_and_line(tmp_path, rows, message):
    with pytest.raises(DataError, match="in.jsonl " + message):
        read_inputs(write(tmp_path, "in.jsonl", jsonl(rows)))


def test_read_inputs_without_inputs(tmp_path):
    only_assistant = jsonl([{"role": "system", "content": "x"}, {"role": "assistant", "content": "y"}])
    with pytest.raises(DataError, match="in.jsonl holds no inputs"):
        read_inputs(write(tmp_path, "in.jsonl", only_assistant))
    with pytest.raises(DataError, match="in.txt is empty"):
        read_inputs(write(tmp_path, "in.txt", "\n \n"))
    with pytest.raises(DataError, match=r"in.csv: expected a .jsonl or .txt file"):
        read_inputs(write(tmp_path, "in.csv", "a,b\n"))
    with pytest.raises(DataError, match="in.jsonl line 1: invalid JSON"):
        read_inputs(write(tmp_path, "in.jsonl", "{oops\n"))


# --- held-out split --------------------------------------------------------------------------------

def test_split_inputs_fraction_and_count():
    inputs = [f"x{i}" for i in range(10)]
    train, held, info = split_inputs(inputs, 0.3, seed=0)
    assert len(held) == 3 and len(train) == 7 and sorted(train + held) == list(range(10))
    assert train == sorted(train) and held == sorted(held)
    assert info == {"seed": 0, "held_out": 0.3, "n_train": 7, "n_held_out": 3, "held_out_indices": held}
    assert split_inputs(inputs, 3, seed=0)[:2] == (train, held)  # a count of 3 is the same split
    assert split_inputs(inputs, 0.3, seed=0) == (train, held, info)  # seeded: reproducible
    assert any(split_inputs(inputs, 0.3, seed=s)[1] != held for s in range(1, 6))  # other seeds differ


@pytest.mark.parametrize("held_out, n", [(0.01, 10), (0.96, 10), (10, 10), (0, 10), (1, 1)])
def test_split_leaving_a_side_empty_names_the_setting_and_numbers(held_out, n):
    with pytest.raises(ConfigError, match=rf"cd.held_out: {held_out!r} of {n} inputs"):
        split_inputs(list(range(n)), held_out, seed=0)


@pytest.mark.parametrize("bad", [1.0, -0.2, 1.5, "0.2", True, None])
def test_split_bad_held_out_value(bad):
    with pytest.raises(ConfigError, match="cd.held_out must be a fraction"):
        split_inputs(list(range(10)), bad, seed=0)


# --- context lengths -------------------------------------------------------------------------------

def test_cut_to_tokens():
    ids = list(range(100, 110))
    assert cut_to_tokens(ids, 3) == [100, 101, 102]
    assert cut_to_tokens(ids, 10) == ids
    with pytest.raises(ConfigError, match="context length 11 tokens asked for, but the context has only 10"):
        cut_to_tokens(ids, 11)
    with pytest.raises(ConfigError, match="positive"):
        cut_to_tokens(ids, 0)
