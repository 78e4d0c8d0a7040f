"""The model sees the tokens of the prompt *text*: context + query tokenised as one string.

Tokenising context and query apart and joining the ids changes the tokens at the seam: byte-level BPE
turns a trailing ``"\\n\\n"`` into one token (``ĊĊ``) that never occurs before a word, CoLA's space
separator leaves a lone ``Ġ``, and SentencePiece tokenizers put a dummy prefix (``▁``) before the query.
Checked on tokenizers trained here the way GPT-2 (byte-level BPE, no BOS), OPT (the same with a BOS)
and Llama (SentencePiece-style ``▁`` pieces, a dummy prefix, BOS) tokenise -- the hub is out of reach,
so their files cannot be fetched -- for every preset and task family; the real SmolLM2 tokenizer is
checked in ``test_slow_smollm2.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptbench.config.schema import PromptSpec
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.data import eval_examples, get_task, train_pool

from .conftest import _corpus

CASES = [("rte", "minimal"), ("rte", "gpt-3"), ("rte", "eval-harness"), ("qqp", "minimal"),
         ("qqp", "eval-harness"), ("cola", "minimal"), ("cola", "gpt-3")]


def _texts(data_dir: Path):
    yield from _corpus(data_dir, per_file=800)
    for _ in range(100):  # blank-line separators and the presets' words, as real corpora have them
        yield "Yes\n\nNo\n\nTrue\n\nFalse\n\nQuestion: Answer: question 1: grammatical: answer: Yes or No?\n\n"


def _train(pre_tokenizer, decoder, bos: bool, data_dir: Path, normalizer=None):
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    if normalizer is not None:
        tok.normalizer = normalizer
    trainer = trainers.BpeTrainer(vocab_size=1500, special_tokens=["<s>", "</s>", "<unk>"], show_progress=False)
    tok.train_from_iterator(_texts(data_dir), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def tokenizers(data_dir):
    from tokenizers import decoders, pre_tokenizers

    byte_level = dict(pre_tokenizer=pre_tokenizers.ByteLevel(add_prefix_space=False), decoder=decoders.ByteLevel())
    metaspace = dict(pre_tokenizer=pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                     decoder=decoders.Metaspace(replacement="▁", prepend_scheme="first"))
    root = Path(data_dir)
    return {"gpt2-style": _train(**byte_level, bos=False, data_dir=root),
            "opt-style": _train(**byte_level, bos=True, data_dir=root),
            "llama-style": _train(**metaspace, bos=True, data_dir=root)}


def _examples(task_name: str, data_dir: str):
    task = get_task(task_name)
    sample = few_shot_sample(train_pool(task, data_dir), 4, seed=0, n_labels=len(task.labels.names))
    evals, _ = eval_examples(task.validation, data_dir, max_examples=12, seed=0)
    return task, sample, evals


@pytest.mark.parametrize("kind", ["gpt2-style", "opt-style", "llama-style"])
@pytest.mark.parametrize("task_name,preset", CASES)
def test_model_sees_the_tokens_of_the_text(tokenizers, data_dir, kind, task_name, preset):
    tok = tokenizers[kind]
    task, sample, evals = _examples(task_name, data_dir)
    enc = PromptEncoder(tok, resolve_prompt(PromptSpec(preset=preset), task), task.labels.names)
    prefix, queries = enc.icl_inputs(sample, evals)
    context = enc.context_text(sample)
    for ex, query in zip(evals, queries):
        assert prefix + query == tok(context + enc.prompt.query(ex))["input_ids"]
    assert len(prefix) >= len(enc.encode(context)) - 2  # only the seam is left out of the shared prefix
    for ex in evals:  # no context: the query as a text of its own
        assert enc.query_ids(ex) == tok(enc.prompt.query(ex))["input_ids"]


def test_joining_ids_would_differ(tokenizers, data_dir):
    """The failure this guards against, shown on the case that exposes it for each tokenizer style."""
    for kind, task_name in (("gpt2-style", "rte"), ("opt-style", "cola"), ("llama-style", "rte")):
        tok = tokenizers[kind]
        task, sample, evals = _examples(task_name, data_dir)
        enc = PromptEncoder(tok, resolve_prompt(PromptSpec(), task), task.labels.names)
        context = enc.context_text(sample)
        joined = enc.encode(context) + tok(enc.prompt.query(evals[0]), add_special_tokens=False)["input_ids"]
        assert joined != tok(context + enc.prompt.query(evals[0]))["input_ids"], kind


def test_continuations_share_the_longest_common_prefix(tokenizers):
    tok = tokenizers["gpt2-style"]
    task = get_task("rte")
    enc = PromptEncoder(tok, resolve_prompt(PromptSpec(), task), task.labels.names)
    context = "A man sleeps. A man is awake. ? No\n\n"
    ids = enc.encode(context)
    shared, suffixes = enc.continuations(context, ids, ["Dogs bark. Dogs are loud. ?", "\n\nOdd start ?"])
    for text, suffix in zip(["Dogs bark. Dogs are loud. ?", "\n\nOdd start ?"], suffixes):
        assert ids[:shared] + suffix == enc.encode(context + text)
        assert suffix  # at least the answer position runs per query
    assert shared < len(ids)  # "\n\n" at the end of the context is not the tokens it becomes before a word
