"""Sequence-level context distillation: the teacher's distribution at every token, distilled and measured."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch

from adaptbench.methods.cd.targets import CompactTargets, compress_topk, full_kl
from adaptbench.methods.cd.sequence import distributions, predicted_hidden, sequence_loss
from adaptbench.models.loading import load_model
from adaptbench.prompts.prompt import Prompt, PromptEncoder
from adaptbench.report.pages import make_report
from adaptbench.scoring.core import PrefixCache, sequence_hidden
from adaptbench.models.interface import lm_parts
from adaptbench.models.parts import vocab_logits

from .conftest import with_settings
from .test_cd import other_tokenizer_model, sharp_llama  # noqa: F401  (fixtures)
from .test_run import _records, _run

CONTEXT = ("The committee met on Tuesday. It decided that every report must name its sources, that numbers are "
           "measured and never assumed, and that a late report is better than a wrong one. ") * 3
INPUTS = ["The report was late but right.", "A man is playing a guitar on the street.",
          "Numbers must be measured.", "The meeting was on Tuesday.", "Sources were named in every report.",
          "A woman reads a book in the park.", "The committee decided quickly.", "Wrong reports are worse.",
          "Two dogs run across a field.", "Every number was checked twice."]


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_cached_teacher_equals_reencoding_the_context(tiny_models, tokenizer, arch):
    """Targets from the shared prefix's KV cache == each reading (context + input as one text) run whole,
    every position, with and without a start token."""
    loaded = load_model(tiny_models[arch])
    parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
    enc = PromptEncoder(tokenizer, Prompt("{text1}"), ())
    reads = enc.read_after(CONTEXT, INPUTS[:5])
    cache = PrefixCache.encode(parts, reads.prefix)
    for has_start in (True, False):
        firsts = [b - has_start for b in reads.starts]
        cached = predicted_hidden(parts, reads.prefix, reads.suffixes, firsts, pad, cache, batch_size=3)
        full = predicted_hidden(parts, reads.prefix, reads.suffixes, firsts, pad, None, batch_size=2)
        for i, (c, f) in enumerate(zip(cached, full)):
            assert len(c) == len(reads.own(i)) + has_start == len(f)
            diff = (distributions(parts, c, 1.0) - distributions(parts, f, 1.0)).abs().max()
            assert diff <= 1e-4, float(diff)


@pytest.fixture(scope="module")
def seam_tokenizer(data_dir):
    """A byte-level BPE that learned ``"\\n\\n"`` as one token, as SmolLM2's did: a string ending in a blank
    line ends in that token, while before code the pre-tokenizer splits the blank line in two."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([CONTEXT + "\n\n", *(t + "\n\n" for t in INPUTS)] * 20, trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert fast("a.\n\n", add_special_tokens=False)["input_ids"][-1] == fast.convert_tokens_to_ids("ĊĊ")
    return fast


def test_the_teacher_reads_context_and_input_as_one_text(tmp_path, data_dir, seam_tokenizer):
    """With a tokenizer whose seam merges, the teacher's targets are those of the text C + X tokenised as one
    string (what a model reads when the file is in the prompt), not of C's tokens followed by X's; the
    targets file holds the ids it read."""
    from safetensors.torch import load_file

    from .conftest import save_tiny_model

    model = save_tiny_model("llama", seam_tokenizer, tmp_path / "seam-llama", init_std=0.2)
    _files(tmp_path)
    cd = "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 2, store: topk, top_k: 400, generations: 0"
    result = _run(tmp_path, data_dir, _config(model, cd).replace("max_steps: 40", "max_steps: 1"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    ids = load_file(info["teacher_targets"])
    targets = CompactTargets.load(info["teacher_targets"])
    context = CONTEXT + "\n\n"  # a file context is followed by the prompt's separator
    train = [INPUTS[i] for i in range(len(INPUTS)) if i not in info["split"]["held_out_indices"]]
    seams = torch.split(ids["seam_ids"], ids["seam_lengths"].tolist())
    owns = torch.split(ids["input_ids"], ids["input_lengths"].tolist())
    loaded = load_model(model)
    parts = lm_parts(loaded.model)
    row = 0
    for text, seam, own in zip(train, seams, owns):
        joint = seam_tokenizer(context + text)["input_ids"]
        read = ids["context_ids"].tolist() + seam.tolist() + own.tolist()
        assert read == joint, "the teacher read other tokens than the text's"
        assert own.tolist() == seam_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert joint != seam_tokenizer(context)["input_ids"] + own.tolist()  # joining the ids is not the text
        with torch.inference_mode():  # the distilled rows: the token before the input's first, to its end
            hidden = sequence_hidden(parts, [joint], loaded.tokenizer.pad_token_id)[0][len(joint) - len(own) - 1:]
        expected = distributions(parts, hidden, 1.0)
        got = targets.rows(row, row + len(hidden)).logprobs
        top = expected.gather(1, targets.rows(row, row + len(hidden)).ids.long())
        assert (got - top).abs().max() <= 1e-4
        row += len(hidden)
    assert row == targets.n_positions == info["distill_positions"]
    assert info["shared_prefix_tokens"] == len(ids["context_ids"]) < info["context_tokens"]
    assert info["inputs_read_otherwise"] == 0


def test_loss_with_top_k_of_the_whole_vocabulary_is_the_full_kl(tiny_models, tokenizer):
    loaded = load_model(tiny_models["llama"])
    parts = lm_parts(loaded.model)
    torch.manual_seed(0)
    teacher_h = [torch.randn(n, 64) for n in (5, 3)]
    student_h = torch.randn(8, 64)
    vocab = len(tokenizer)
    targets = [compress_topk(distributions(parts, h, 2.0), vocab) for h in teacher_h]
    loss = sequence_loss(parts, student_h, [5, 3], targets, 2.0)
    with torch.no_grad():
        teacher = torch.cat([distributions(parts, h, 2.0) for h in teacher_h])
        expected = 4.0 * full_kl(teacher, vocab_logits(parts, student_h), 2.0).mean()
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-5, abs=1e-6)


def _config(model: str, cd: str, extra: str = "") -> str:
    return with_settings(f"""# adaptbench run sweep.yaml
name: t
model: {model}
task: none
method: cd
trainable: full
shots: 0
data_seeds: [0]
cd: {{target: sequence, {cd}}}
train: {{max_steps: 40, batch_size: 4, lr: 3.0e-3, warmup_ratio: 0.0, schedule: constant}}
runtime: {{progress: false}}
""", extra)


def _files(tmp_path, chat: bool = False):
    (tmp_path / "context.txt").write_text(CONTEXT)
    with open(tmp_path / "inputs.jsonl", "w") as f:
        for text in INPUTS:
            f.write(json.dumps({"role": "user", "content": text} if chat else {"text": text}) + "\n")
    if chat:
        with open(tmp_path / "chat.jsonl", "w") as f:
            for role, content in (("system", "You are the committee's secretary."), ("user", "What was decided?"),
                                  ("assistant", CONTEXT)):
                f.write(json.dumps({"role": role, "content": content}) + "\n")


def test_distilling_a_document_onto_text_inputs(tmp_path, data_dir, sharp_llama):  # noqa: F811
    """task: none, a file context, text inputs: the student gets closer to the teacher on held-out
    inputs it never trained on; the record holds the measures, the targets and the generations."""
    _files(tmp_path)
    cd = "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 3, store: topk, top_k: 64, max_new_tokens: 4"
    result = _run(tmp_path, data_dir, _config(sharp_llama, cd))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["split"]["n_train"] == 7 and info["split"]["n_held_out"] == 3
    assert info["distill_inputs"] == 7 and info["context"] == "file" and info["top_k"] == 64
    assert info["bytes_per_position"] == 64 * 8 + 4 and info["target_bytes_ratio"] < 0.1
    held = info["heldout"]
    assert held["kl_base"] > 0.05 and held["kl_student"] < held["kl_base"] and 0 < held["recovered"] <= 1
    assert held["positions"] > 20
    losses = info["train_losses"]
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    targets = CompactTargets.load(info["teacher_targets"])
    assert targets.n_positions == info["distill_positions"] and targets.k == 64
    assert len(info["generations"]) == 2 and set(info["generations"][0]) == {"input", "base", "teacher", "student"}
    assert {"teacher", "train", "heldout"} <= set(rec["costs"]) and rec["metrics"] == {}
    # the run's output, the summary tables and the report show what the student recovered and its generations
    assert f"{held['recovered']:.0%} of {info['context_tokens']:,} tok" in result.output
    report = make_report(str(tmp_path / "results" / "t"))
    row = report.summary.iloc[0]
    assert row["recovered"] == pytest.approx(held["recovered"]) and row["context_tokens"] == info["context_tokens"]
    assert list(report.table.columns[-9:-4]) == ["L", "KL base", "KL student", "recovered", "top-1 agree"]
    md = (tmp_path / "results" / "t" / "report" / "summary.md").read_text()
    page = (tmp_path / "results" / "t" / "report" / "report.html").read_text()
    first = info["generations"][0]
    assert "generations side by side" in md and "| input | base | teacher | student |" in md
    assert html.escape(first["teacher"]) in page and html.escape(first["student"]) in page


def test_a_conversation_as_context_and_user_turns_as_inputs(tmp_path, data_dir, tiny_models):
    _files(tmp_path, chat=True)
    cd = "context: 'chat:chat.jsonl', inputs: inputs.jsonl, held_out: 0.2, store: topk, top_k: 5000, generations: 1"
    result = _run(tmp_path, data_dir, _config(tiny_models["gpt2"], cd).replace("max_steps: 40", "max_steps: 2"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["chat_rendering"] == "plain" and info["chat_turns"] == 3  # the test tokenizer has no template
    assert info["generations"][0]["input"].startswith("User: ") and info["generations"][0]["input"].endswith(
        "Assistant:")
    assert info["top_k"] == 2000 and "larger than the vocabulary" in info["top_k_note"]  # clamped, noted


def test_sequence_targets_on_a_classification_task(tmp_path, data_dir, tiny_models):
    """Task inputs: the queries of the sample; accuracy as usual, and the held-out measures on the
    in-domain eval set's first queries."""
    _files(tmp_path)
    base = _config(tiny_models["opt"], "unlabeled: 2, alpha: 0.5, context: 'file:context.txt'").replace(
        "task: none", "task: rte").replace("shots: 0", "shots: 4").replace("max_steps: 40", "max_steps: 3")
    result = _run(tmp_path, data_dir, base + "eval: {max_examples: 6}\n")
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    assert set(rec["metrics"]) == {"rte", "hans"} and rec["metrics"]["rte"]["all"]["n"] == 6
    assert rec["method_info"]["distill_inputs"] == 6 and rec["method_info"]["heldout"]["positions"] > 0
    # with the demonstrations as context, the labelled sample is not distilled (the teacher has its answers)
    demos = base.replace(", context: 'file:context.txt'", "")
    assert _run(tmp_path, data_dir, demos + "eval: {max_examples: 6}\n").exit_code == 0
    rec = [r for r in _records(tmp_path) if r["method_info"].get("context") == "demonstrations"][0]
    assert rec["status"] == "ok" and rec["method_info"]["distill_inputs"] == 2


@pytest.mark.parametrize("setup,cd,message", [
    ("bad-chat", "context: 'chat:chat.jsonl', inputs: inputs.jsonl", "chat.jsonl line 2: unknown role 'robot'"),
    ("empty-inputs", "context: 'file:context.txt', inputs: inputs.jsonl", "inputs.jsonl is empty"),
    ("", "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 10", "cd.held_out"),
    ("", "context: 'file:context.txt'", "task: none"),
    ("", "context: 'file:context.txt', inputs: inputs.jsonl, teacher_cache: false", "teacher_cache"),
    ("", "context: 'file:context.txt', inputs: inputs.jsonl, checks: [{call: 'nope.f'}]",
     "cd.checks[0]: call 'nope.f': cannot import 'nope'"),
    ("", "context: 'file:context.txt', inputs: inputs.jsonl, checks: [{regex: '(x'}]", "regex '(x' does not compile"),
])
def test_bad_input_stops_before_any_model_loads(tmp_path, data_dir, setup, cd, message):
    _files(tmp_path)
    if setup == "bad-chat":
        (tmp_path / "chat.jsonl").write_text('{"role": "system", "content": "Hi"}\n{"role": "robot", "content": "x"}\n')
    if setup == "empty-inputs":
        (tmp_path / "inputs.jsonl").write_text("\n")
    result = _run(tmp_path, data_dir, _config("no/such-model", cd))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "results" / "t" / "runs").exists()


def test_context_longer_than_the_window_and_other_tokenizer(tmp_path, data_dir, short_window_model, tiny_models,
                                                          other_tokenizer_model):  # noqa: F811
    _files(tmp_path)
    (tmp_path / "context.txt").write_text(CONTEXT * 4)
    cd = "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 2"
    assert _run(tmp_path, data_dir, _config(short_window_model, cd)).exit_code == 0
    [rec] = _records(tmp_path)
    assert rec["status"] == "skipped" and "tokens; the teacher's window is 256 tokens" in rec["reason"]
    teacher = f", teacher: {{name: {other_tokenizer_model}}}"
    assert _run(tmp_path, data_dir, _config(tiny_models["opt"], cd + teacher)).exit_code == 1
    failed = [r for r in _records(tmp_path) if r["status"] == "failed"]
    assert "cd.target: sequence needs teacher and student to share one tokenizer" in failed[0]["reason"]


def test_hidden_state_targets_give_the_full_kl(tiny_models, tokenizer):
    """cd.store: hidden keeps the teacher's hidden states (float16) and its output layer: the loss is the
    full-vocabulary KL up to float16 rounding, where top-k targets only bound it from below."""
    from adaptbench.methods.cd.sequence import teacher_targets

    loaded = load_model(tiny_models["llama"])
    parts = lm_parts(loaded.model)
    torch.manual_seed(0)
    teacher_h = [torch.randn(6, 64) * 3, torch.randn(4, 64) * 3]
    student_h = torch.randn(10, 64) * 3
    with torch.no_grad():
        teacher = torch.cat([distributions(parts, h, 1.0) for h in teacher_h])
        exact = float(full_kl(teacher, vocab_logits(parts, student_h), 1.0).mean())
    hidden = teacher_targets(parts, teacher_h, 1.0, "hidden", 0)
    assert hidden.bytes_per_position == 64 * 2 and hidden.n_positions == 10
    blocks = [hidden.rows(0, 6), hidden.rows(6, 10)]
    with torch.no_grad():
        got = float(sequence_loss(parts, student_h, [6, 4], blocks, 1.0))
        topk = teacher_targets(parts, teacher_h, 1.0, "topk", 8)
        bound = float(sequence_loss(parts, student_h, [6, 4], [topk.rows(0, 6), topk.rows(6, 10)], 1.0))
    assert abs(got - exact) <= 1e-3 * max(1.0, exact)
    assert bound <= exact + 1e-6


def test_hidden_store_and_teacher_continuations_run_end_to_end(tmp_path, data_dir, tiny_models):
    """cd.store: hidden and cd.generate: the run distils inputs plus sampled continuations, exactly."""
    from adaptbench.methods.cd.generate import continuations

    _files(tmp_path)
    cd = ("context: 'file:context.txt', inputs: inputs.jsonl, held_out: 2, store: hidden, generations: 0, "
          "generate: {n: 2, max_new_tokens: 5, seed: 3}")
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], cd).replace("max_steps: 40", "max_steps: 2"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["store"] == "hidden" and info["bytes_per_position"] == 64 * 2 and "top_k" not in info
    assert info["generated_inputs"] == 16 and info["distill_inputs"] == 8 + 16
    # sampled with the context's KV cache == sampled re-reading the context (same seed, same tokens)
    loaded = load_model(tiny_models["llama"])
    tok, parts = loaded.tokenizer, lm_parts(loaded.model)
    context = tok(CONTEXT)["input_ids"]
    xs = [tok(t, add_special_tokens=False)["input_ids"] for t in INPUTS[:2]]
    cached = continuations(loaded.model, tok, context, xs, PrefixCache.encode(parts, context), 2, 6, 1.0, 0)
    assert cached == continuations(loaded.model, tok, context, xs, None, 2, 6, 1.0, 0)
    assert len(cached) == 4 and all(0 < len(c) <= 6 for c in cached)


def test_the_reply_measure_is_the_kl_on_the_teachers_replies(tmp_path, data_dir, sharp_llama):  # noqa: F811
    """method_info.heldout.reply: the teacher writes a greedy reply to each held-out input (reading the context);
    KL(teacher || base) is taken where the reply's tokens are predicted, teacher-forced.  Recomputed here
    from its definition, every reading run whole (no cache)."""
    _files(tmp_path)
    cd = "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 3, generations: 0, max_new_tokens: 6"
    result = _run(tmp_path, data_dir, _config(sharp_llama, cd).replace("max_steps: 40", "max_steps: 2"))
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    info = rec["method_info"]
    reply = info["heldout"]["reply"]
    assert reply["replies"] == "greedy" and reply["max_new_tokens"] == 6
    assert set(reply) >= {"kl_student", "kl_base", "recovered", "positions", "top1_agreement_student"}
    loaded = load_model(sharp_llama)
    tok = loaded.tokenizer
    context = CONTEXT + "\n\n"
    kl_sum, positions, texts = 0.0, 0, []
    with torch.inference_mode():
        for i in info["split"]["held_out_indices"]:
            x = tok(INPUTS[i], add_special_tokens=False)["input_ids"]
            read = tok(context + INPUTS[i])["input_ids"]
            out = loaded.model.generate(torch.tensor([read]), attention_mask=torch.ones(1, len(read), dtype=torch.long),
                                        max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
            r = out[0, len(read):].tolist()
            texts.append(tok.decode(r, skip_special_tokens=True))
            teacher = loaded.model(torch.tensor([read + r])).logits[0, len(read) - 1:len(read) - 1 + len(r)]
            student_ids = tok(INPUTS[i])["input_ids"] + r
            base = loaded.model(torch.tensor([student_ids])).logits[0, len(student_ids) - len(r) - 1:-1]
            t, b = torch.log_softmax(teacher, -1), torch.log_softmax(base, -1)
            kl_sum += float((t.exp() * (t - b)).sum())
            positions += len(r)
            assert tok(INPUTS[i])["input_ids"][1:] == x
    assert info["heldout_replies"] == texts
    assert reply["positions"] == positions > 0
    assert reply["kl_base"] == pytest.approx(kl_sum / positions, rel=1e-4, abs=1e-5)
    assert reply["recovered"] == pytest.approx(1 - reply["kl_student"] / reply["kl_base"])


def test_a_conversation_distils_the_teachers_replies_by_default(tmp_path, data_dir, tiny_models):
    """Anthropic's recipe by default for a chat context: the teacher's sampled continuations of the user
    turns are distilled too; generate: false turns it off."""
    _files(tmp_path, chat=True)
    cd = "context: 'chat:chat.jsonl', inputs: inputs.jsonl, held_out: 2, generations: 0, max_new_tokens: 4"
    base = _config(tiny_models["gpt2"], cd).replace("max_steps: 40", "max_steps: 1")
    assert _run(tmp_path, data_dir, base).exit_code == 0
    off = base.replace("max_new_tokens: 4", "max_new_tokens: 4, generate: false")
    assert _run(tmp_path, data_dir, off).exit_code == 0
    on, plain = sorted(_records(tmp_path), key=lambda r: "generate" not in r["method_info"])
    assert on["method_info"]["generate"] == {"n": 1, "max_new_tokens": 32, "temperature": 1.0, "seed": 0}
    assert on["method_info"]["generated_inputs"] == 8 and on["method_info"]["distill_inputs"] == 16
    assert "generate" not in plain["method_info"] and plain["method_info"]["distill_inputs"] == 8
    assert on["spec"]["resolved"]["cd_sequence"] == 2 and on["run_id"] != plain["run_id"]
