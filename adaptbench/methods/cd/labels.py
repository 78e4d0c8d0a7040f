"""Context distillation onto the answer position: the teacher's verbalizer (or vocabulary) distribution.

The teacher reads a context -- the data seed's k demonstrations, a text file or a conversation --
followed by each distillation input, and gives its distribution over the verbalizer tokens
(``cd.target: labels``, works across tokenizers) or over the whole vocabulary (``cd.target: vocab``)
at the answer position.  No labelled input is scored by a teacher that has it among its
demonstrations: each gets a leave-one-out context (the other k - 1 demonstrations); unlabelled inputs
share the full context.  Context and input are tokenised as one text; the tokens every input of a
context shares with it are encoded once (KV cache), and a context reuses the keys/values of the tokens
it shares with the one scored before it (leave-one-out contexts i and i + 1 share demonstrations
0..i-1), so the k contexts cost about half of k encodings.
"""

from __future__ import annotations

import numpy as np

from ...data.contexts import parse_context_setting
from ...errors import ConfigError, RunSkipped
from ...measure.metrics import eval_set_metrics
from ...scoring.scores import log_softmax
from ...training.checkpoint import faulting
from ..base import RunContext
from ..icl import ICLPredictor
from .context import context_text


def teacher_texts(ctx: RunContext, n_inputs: int, n_labelled: int, tokenizer) -> tuple[dict, list]:
    """The contexts a teacher reads, by key, and each input's key.  Demonstrations: labelled input i
    (== sample[i]) gets the context without itself (``("loo", i)``), the others the full one."""
    source = parse_context_setting(ctx.spec.cd.context, ctx.config_dir)
    if source.kind != "demonstrations":
        return {("full", 0): context_text(source, ctx, tokenizer)[0]}, [("full", 0)] * n_inputs
    sample, context = ctx.sample, ctx.encoder.prompt.context
    keys = [("loo", i) for i in range(n_labelled)] + [("full", 0)] * (n_inputs - n_labelled)
    texts = {("full", 0): context(sample)}
    texts.update({("loo", i): context(sample[:i] + sample[i + 1:]) for i in range(n_labelled)})
    return texts, keys


FULL = ("full", 0)  # the whole context's key (the leave-one-out ones are ("loo", i))


class Teacher:
    """A teacher model, the contexts it reads and the inputs it scores after them, through the one model
    interface (a local model reuses shared prefixes' KV caches, an API model sends the texts)."""

    def __init__(self, ctx: RunContext, loaded, inputs: list, n_labelled: int):
        settings = ctx.spec.cd
        self.ctx, self.loaded, self.model = ctx, loaded, ctx.scoring_model(loaded)
        self.encoder = self.model.encoder(ctx.encoder.prompt, ctx.task.labels.names)
        self.temperature, self.vocab = settings.temperature, settings.target == "vocab"
        self.texts, keys = teacher_texts(ctx, len(inputs), n_labelled, loaded.tokenizer)
        self.scorer = self.model.scorer(self.encoder, self.texts, label="teacher", progress=ctx.progress, info=ctx.info,
                                        batch_size=8)
        full = self.scorer.context_tokens(FULL)
        if full is not None and full >= loaded.window:
            raise RunSkipped(f"the teacher's context is {full} tokens; its window is {loaded.window} tokens (no "
                             f"truncation is done)")
        self.reading = self.scorer.read([(k, self.encoder.prompt.query(x)) for k, x in zip(keys, inputs)])
        self.fits = self.scorer.fits(self.reading)

    def targets(self, indices: list[int], cached: bool, progress=None) -> np.ndarray:
        """The teacher's distributions of the inputs ``indices``; ``tokens`` then holds the tokens it read
        (with a cache: each context once, and each input's own tokens)."""
        s = self.scorer.score(self.reading, indices, cached=cached, full_vocab=self.vocab,
                              on_batch=faulting("teacher", progress))
        self.tokens = s.tokens + (sum(self.scorer.context_tokens(k) or 0 for k in self.texts) if cached else 0)
        return np.exp(log_softmax((s.vocab if self.vocab else s.logits) / self.temperature))

    def evaluate(self, ctx: RunContext) -> dict[str, np.ndarray]:
        """The teacher's own ICL predictions (full context) on every eval set: a reference point."""
        scorer = self.model.scorer(self.encoder, {FULL: self.texts[FULL]}, label="teacher", progress=ctx.progress,
                                   info=ctx.info, batch_size=ctx.runtime.batch_size)
        scorer.prepare(FULL)
        icl = ICLPredictor(scorer, self.encoder, {}, key=FULL)
        preds = {name: icl.predict(examples, name).labels for name, _, examples in ctx.evals}
        ctx.info["teacher_metrics"] = {name: eval_set_metrics(eval_set, examples, preds[name])
                                       for name, eval_set, examples in ctx.evals}
        return preds


def check_same_tokenizer(ctx: RunContext, teacher_tokenizer) -> None:
    """cd.target vocab and sequence compare distributions token by token: one tokenizer for both."""
    target = ctx.spec.cd.target
    if target in ("vocab", "sequence") and teacher_tokenizer.get_vocab() != ctx.loaded.tokenizer.get_vocab():
        raise ConfigError(f"cd.target: {target} needs teacher and student to share one tokenizer; the teacher's "
                          f"vocabulary ({len(teacher_tokenizer)} tokens) differs from the student's "
                          f"({len(ctx.loaded.tokenizer)}): use cd.target: labels, which works across tokenizers")
