"""Encoder-decoder models (T5, BART): loading, scoring at the decoder's first position, training, every
method x policy end to end, and the refusals, on tiny random models built here.

Two tokenizers are derived from the session's trained BPE: a T5-like one (no start token, ``</s>``
appended, its own ``<pad>``) and a BART-like one (``<s> ... </s>``, no pad: the loader gives it one).
The tiny T5 is gated (Flan-T5's ``wi_0``/``wi_1``) and scales its decoder states before the head, as the
original T5; the tiny BART gets a random ``final_logits_bias`` so that the head's bias is checked too.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from adaptbench.config.schema import PromptSpec, RunSpec, RuntimeOptions
from adaptbench.measure.costs import CostTracker
from adaptbench.errors import ConfigError
from adaptbench.methods.base import RunContext
from adaptbench.methods.cd import Teacher
from adaptbench.methods.pbft import VerbalizerModel
from adaptbench.methods.vanilla import HeadModel
from adaptbench.models.loading import ALIASES, load_model
from adaptbench.training.packing import packing_unsupported
from adaptbench._util.progress import make_progress
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.models.interface import lm_parts
from adaptbench.scoring.core import score
from adaptbench.training.policies import BitfitSettings, LoraSettings
from adaptbench.methods.cd.settings import CDSettings
from adaptbench.training.settings import TrainSettings
from adaptbench.training.policies import apply_policy
from adaptbench.training.loop import TrainItem, train

from .test_run import _records, _run

ARCHS = ("t5", "bart")
WINDOW = 1024


def _derived_tokenizer(tokenizer, template: str, **special):
    """The session tokenizer's vocabulary and merges with another post-processor and special tokens."""
    from tokenizers import Tokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    used = [(t, tok.token_to_id(t)) for t in ("<s>", "</s>") if t in template]
    tok.post_processor = TemplateProcessing(single=template, special_tokens=used)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", **special)


def _t5(tokenizer):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = _derived_tokenizer(tokenizer, "$A </s>")
    tok.add_special_tokens({"pad_token": "<pad>"})  # T5 pads with a token of its own, and starts its decoder with it
    config = T5Config(vocab_size=len(tok), d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, n_positions=WINDOW,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      decoder_start_token_id=tok.pad_token_id)
    return T5ForConditionalGeneration(config), tok


def _bart(tokenizer):
    from transformers import BartConfig, BartForConditionalGeneration

    tok = _derived_tokenizer(tokenizer, "<s> $A </s>", bos_token="<s>")
    config = BartConfig(vocab_size=len(tok), d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        max_position_embeddings=WINDOW, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                        decoder_start_token_id=tok.eos_token_id, forced_eos_token_id=None,
                        init_std=0.2)  # at BART's 0.02 the decoder's first state barely depends on the input
    model = BartForConditionalGeneration(config)
    model.final_logits_bias.normal_(std=0.5)
    return model, tok


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Matrices of 64 columns gain nothing from more threads, and threads that wait for a core that another
    process holds spin: on a busy 2-core machine this module took 190 s with two threads, 30 s with one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seq2seq_models(tokenizer, tmp_path_factory) -> dict[str, str]:
    """arch -> folder of a tiny random encoder-decoder with its tokenizer."""
    root = tmp_path_factory.mktemp("seq2seq")
    out = {}
    for arch, build in (("t5", _t5), ("bart", _bart)):
        torch.manual_seed(0)
        model, tok = build(tokenizer)
        model.save_pretrained(root / arch)
        tok.save_pretrained(root / arch)
        out[arch] = str(root / arch)
    return out


@pytest.fixture(scope="module")
def rte(data_dir):
    from adaptbench.data import eval_examples, get_task, train_pool

    task = get_task("rte")
    pool = train_pool(task, data_dir)
    evals, _ = eval_examples(task.validation, data_dir, max_examples=6, seed=0)
    return task, pool, few_shot_sample(pool, 4, seed=0, n_labels=2), evals


def _encoder(loaded, task) -> PromptEncoder:
    return PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)


def _reference_logits(loaded, text: str, label_ids: list[int]) -> tuple[np.ndarray, float]:
    """The model's own forward: the tokenizer's ids of the whole text in the encoder, the start token in the
    decoder; the verbalizer logits at the decoder's first position, and the vocabulary's log-normaliser."""
    model = loaded.model
    ids = torch.tensor([loaded.tokenizer(text)["input_ids"]])
    with torch.inference_mode():
        logits = model(input_ids=ids, decoder_input_ids=torch.tensor([[model.config.decoder_start_token_id]])).logits
    return logits[0, 0, label_ids].numpy(), torch.logsumexp(logits[0, 0], -1).item()


@pytest.mark.parametrize("arch", ARCHS)
def test_loads_as_an_encoder_decoder(seq2seq_models, tiny_models, arch):
    loaded = load_model(seq2seq_models[arch])
    assert loaded.info["encoder_decoder"] is True
    assert loaded.info["architecture"] == {"t5": "T5ForConditionalGeneration",
                                           "bart": "BartForConditionalGeneration"}[arch]
    assert loaded.window == WINDOW - 1  # the end-of-sequence token the encoder reads after the prompt
    assert loaded.pad_token_from == {"t5": None, "bart": "eos_token"}[arch]
    assert load_model(tiny_models["opt"]).info["encoder_decoder"] is False
    assert ALIASES["t5-small"] == "google-t5/t5-small" and ALIASES["flan-t5-large"] == "google/flan-t5-large"
    assert ALIASES["bart-base"] == "facebook/bart-base" and ALIASES["flan-t5-small"] == "google/flan-t5-small"


@pytest.mark.parametrize("arch", ARCHS)
def test_scores_equal_the_models_forward_at_the_decoders_first_position(seq2seq_models, rte, arch):
    """Zero-shot and with demonstrations, batched with ragged lengths: adaptbench's verbalizer logits and
    log-normaliser equal the model's own logits at decoder position 0, given tokenizer(whole text)."""
    task, _, sample, evals = rte
    loaded = load_model(seq2seq_models[arch])
    if arch == "bart":
        assert loaded.model.final_logits_bias.abs().sum() > 0  # the head's bias is part of what is checked
    enc = _encoder(loaded, task)
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    for demos in ([], sample[:2]):
        prefix, queries = enc.icl_inputs(demos, evals)
        s = score(parts, queries, enc.label_token_ids, pad, prefix_ids=prefix, batch_size=4)
        for i, ex in enumerate(evals):
            want, log_norm = _reference_logits(loaded, enc.context_text(demos) + enc.prompt.query(ex),
                                               enc.label_token_ids)
            np.testing.assert_allclose(s.logits[i], want, atol=1e-5, rtol=0)
            np.testing.assert_allclose(s.label_logprobs[i], want - np.logaddexp.reduce(want), atol=1e-5, rtol=0)
            assert abs(s.log_norm[i] - log_norm) < 1e-4
    assert "encoder-decoder" in loaded.capabilities.prefix_cache


@pytest.mark.parametrize("arch", ARCHS)
def test_cd_teacher_reads_the_context_in_its_encoder(seq2seq_models, rte, arch):
    """The teacher's targets (leave-one-out contexts, no prefix cache) are the softmax of the model's own
    verbalizer logits for context + input as one text."""
    task, pool, sample, _ = rte
    loaded = load_model(seq2seq_models[arch])
    spec = RunSpec(model={"name": "x"}, task="rte", method="cd", shots=4, data_seed=0, trainable="full", train={},
                   cd=CDSettings())
    ctx = RunContext(spec, task, loaded, _encoder(loaded, task), sample, pool, CostTracker(), RuntimeOptions(),
                     make_progress(False))
    teacher = Teacher(ctx, loaded, sample, len(sample))
    got = teacher.targets(list(range(len(sample))), cached=True)
    for i, ex in enumerate(sample):
        text = ctx.encoder.context_text(sample[:i] + sample[i + 1:]) + ctx.encoder.prompt.query(ex)
        want, _ = _reference_logits(loaded, text, ctx.encoder.label_token_ids)
        np.testing.assert_allclose(got[i], np.exp(want - np.logaddexp.reduce(want)), atol=1e-5)


TRAIN_CASES = [("pbft", "full", None), ("pbft", "bitfit", None), ("pbft", "lora", None),
               ("vanilla", "head", "decoder_first"), ("vanilla", "full", "encoder_mean")]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method,policy,pooling", TRAIN_CASES)
def test_training_reduces_the_loss(seq2seq_models, rte, arch, method, policy, pooling):
    task, _, sample, _ = rte
    loaded = load_model(seq2seq_models[arch])
    enc = _encoder(loaded, task)
    torch.manual_seed(0)
    model = (VerbalizerModel(loaded.model, enc.label_token_ids) if method == "pbft"
             else HeadModel(loaded.model, 2, pooling=pooling))
    info = apply_policy(model, policy, lora=LoraSettings(), bitfit=BitfitSettings(add_biases=True))
    if policy == "lora":
        assert info["lora_target_modules"] == {"t5": ["q", "v"], "bart": ["q_proj", "v_proj"]}[arch]
    if policy == "bitfit":  # T5 has no biases of its own; BART has
        assert ("added_biases" in info) == (arch == "t5")
    assert packing_unsupported(model.lm).startswith("encoder-decoder")
    items = [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample]
    settings = TrainSettings(max_steps=25, batch_size=4, lr=3e-3, warmup_ratio=0.0, schedule="constant")
    log = train(model, items, settings, loss_fn=torch.nn.functional.cross_entropy, pad_id=loaded.tokenizer.pad_token_id,
                seed=0, device=loaded.device, progress=make_progress(False))
    assert np.mean(log.losses[-3:]) < 0.6 * np.mean(log.losses[:3]), log.losses


def test_t5_bitfit_without_added_biases_is_refused(seq2seq_models, rte):
    task = rte[0]
    loaded = load_model(seq2seq_models["t5"])
    model = VerbalizerModel(loaded.model, _encoder(loaded, task).label_token_ids)
    with pytest.raises(ConfigError, match=r"has no bias terms.*bitfit.add_biases.*\(k, o, q, v, wi_0, wi_1, wo\)"):
        apply_policy(model, "bitfit", bitfit=BitfitSettings())


def _sweep(t5: str, bart: str) -> str:
    return f"""# adaptbench run sweep.yaml
name: t
model: [{t5}, {bart}]
task: rte
shots: 4
data_seeds: [0]
train: {{max_steps: 2, batch_size: 4, lr: 1.0e-3}}
bitfit: {{add_biases: true}}
eval: {{max_examples: 4, sets: [rte]}}
runtime: {{progress: false}}
include:
  - {{method: icl}}
  - {{method: [pbft, cd], trainable: [full, bitfit, lora]}}
  - {{method: vanilla, trainable: [full, head, bitfit, lora]}}
  - {{model: {t5}, method: vanilla, trainable: head, vanilla: {{pooling: encoder_mean}}}}
  - {{model: {bart}, method: cd, trainable: full, cd: {{target: vocab, unlabeled: 2}}}}
"""


@pytest.fixture
def frozen_heap():
    """Every run's phases collect garbage several times; the session's long-lived objects (models, data
    pools, tokenizers) are left out of those collections (they took most of this test's time)."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


def test_every_method_and_policy_end_to_end(tmp_path, data_dir, seq2seq_models, frozen_heap):
    result = _run(tmp_path, data_dir, _sweep(seq2seq_models["t5"], seq2seq_models["bart"]))
    recs = _records(tmp_path)
    assert len(recs) == 2 * 11 + 2, result.output
    bad = [(r["spec"]["method"], r["spec"]["trainable"], r.get("reason")) for r in recs if r["status"] != "ok"]
    assert not bad and result.exit_code == 0, bad
    for rec in recs:
        info, arch = rec["method_info"], "t5" if rec["spec"]["model"]["name"] == seq2seq_models["t5"] else "bart"
        assert rec["model"]["encoder_decoder"] is True and set(rec["metrics"]) == {"rte"}
        assert rec["metrics"]["rte"]["all"]["n"] == 4
        if rec["spec"]["method"] == "icl":
            assert info["prefix_cache"] is False and "encoder-decoder" in info["capabilities_off"]["prefix_cache"]
            continue
        assert info["packed_batches"] is False and "encoder-decoder" in info["capabilities_off"]["packing"]
        if rec["spec"]["trainable"] == "bitfit":
            assert ("added_biases" in info) == (arch == "t5")
        if rec["spec"]["method"] == "vanilla":
            assert info["pooling"] == (rec["spec"]["vanilla"].get("pooling") or "decoder_first")


def test_refusals_name_the_field(tmp_path, data_dir, seq2seq_models, tiny_models):
    text = f"""# adaptbench run sweep.yaml
name: t
task: rte
shots: 4
data_seeds: [0]
trainable: full
train: {{max_steps: 1, batch_size: 4}}
eval: {{max_examples: 4}}
runtime: {{progress: false}}
include:
  - {{model: {seq2seq_models["t5"]}, method: cd, cd: {{target: sequence}}}}
  - {{model: {tiny_models["opt"]}, method: vanilla, vanilla: {{pooling: encoder_mean}}}}
"""
    assert _run(tmp_path, data_dir, text).exit_code == 1
    reasons = {r["spec"]["method"]: r["reason"] for r in _records(tmp_path) if r["status"] == "failed"}
    assert "cd.target: sequence needs causal LMs" in reasons["cd"] and "encoder-decoder" in reasons["cd"]
    assert "vanilla.pooling: encoder_mean applies to encoder-decoder models" in reasons["vanilla"]
