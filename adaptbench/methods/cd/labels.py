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
from ...prompts.prompt import PromptEncoder, common_prefix_length
from ...scoring.core import PrefixCache, log_softmax, prefix_cache_unsupported, score
from ...models.interface import lm_parts
from ..base import RunContext
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


class Teacher:
    """A teacher model with its own tokenizer, the contexts it reads, and the inputs it scores."""

    share_prefixes = True  # False: every context encoded on its own (bench/cd_teacher_cache.py's "before")

    def __init__(self, ctx: RunContext, loaded, inputs: list, n_labelled: int):
        settings = ctx.spec.cd
        self.loaded = loaded
        self.encoder = PromptEncoder(loaded.tokenizer, ctx.encoder.prompt, ctx.task.labels.names)
        self.parts = lm_parts(loaded.model)
        self.cache_ok = prefix_cache_unsupported(loaded.model.config) is None  # no KV reuse with sliding windows
        self.temperature = settings.temperature
        self.vocab = settings.target == "vocab"
        texts, keys = teacher_texts(ctx, len(inputs), n_labelled, loaded.tokenizer)
        self.texts = texts
        self.contexts = {key: self.encoder.encode(text) if text else [] for key, text in texts.items()}
        window = loaded.window
        if len(self.contexts[("full", 0)]) >= window:
            raise RunSkipped(f"the teacher's context is {len(self.contexts[('full', 0)])} tokens; its window is "
                             f"{window} tokens (no truncation is done)")
        self.keys = keys
        self.queries: list[list[int]] = [[] for _ in inputs]
        self.shared: dict = {}  # context key -> tokens its inputs share with it (the cacheable prefix)
        for key, text in texts.items():  # context + input tokenised as one text, per context
            members = [i for i, k in enumerate(keys) if k == key]
            self.shared[key], suffixes = self.encoder.continuations(
                text, self.contexts[key], [self.encoder.prompt.query(inputs[i]) for i in members])
            for i, suffix in zip(members, suffixes):
                self.queries[i] = suffix
        self.fits = [self.shared[k] + len(q) <= window for k, q in zip(keys, self.queries)]

    def prefix_cache(self, prefix: list[int], previous: tuple[list[int], PrefixCache] | None = None
                     ) -> PrefixCache | None:
        """The prefix's KV cache where the model allows one (else scoring joins prefix and query).
        ``previous`` (its tokens and cache): the tokens both share are not run again -- the leave-one-out
        contexts of demonstrations i and i + 1 share the first i demonstrations."""
        if not prefix or not self.cache_ok:
            return None
        shared = common_prefix_length(previous[0], prefix) if previous is not None and previous[1] else 0
        if not shared:
            return PrefixCache.encode(self.parts, prefix)
        base = previous[1].truncated(shared)
        return base if shared == len(prefix) else base.extended(self.parts, prefix[shared:])

    def _distribution(self, s) -> np.ndarray:
        return np.exp(log_softmax((s.vocab if self.vocab else s.logits) / self.temperature))

    def targets(self, indices: list[int], cached: bool, progress=None) -> np.ndarray:
        """Teacher distributions of the inputs ``indices``, grouped by context (one prefix per group)."""
        n_out = self.parts.vocab_size if self.vocab else len(self.encoder.label_token_ids)
        out = np.zeros((len(indices), n_out), dtype=np.float32)
        groups: dict = {}
        for pos, i in enumerate(indices):
            groups.setdefault(self.keys[i], []).append(pos)
        pad = self.loaded.tokenizer.pad_token_id
        previous = None  # the last group's prefix and cache: the next one reuses what they share
        for key, positions in groups.items():
            prefix = self.contexts[key][:self.shared[key]]
            queries = [self.queries[indices[p]] for p in positions]
            cache = self.prefix_cache(prefix, previous if self.share_prefixes else None) if cached else None
            previous = (prefix, cache)
            s = score(self.parts, queries, self.encoder.label_token_ids, pad, prefix_ids=prefix, prefix_cache=cache,
                      batch_size=8, full_vocab=self.vocab, on_batch=progress)
            out[positions] = self._distribution(s)
        return out


def check_same_tokenizer(ctx: RunContext, teacher_tokenizer) -> None:
    """cd.target vocab and sequence compare distributions token by token: one tokenizer for both."""
    target = ctx.spec.cd.target
    if target in ("vocab", "sequence") and teacher_tokenizer.get_vocab() != ctx.loaded.tokenizer.get_vocab():
        raise ConfigError(f"cd.target: {target} needs teacher and student to share one tokenizer; the teacher's "
                          f"vocabulary ({len(teacher_tokenizer)} tokens) differs from the student's "
                          f"({len(ctx.loaded.tokenizer)}): use cd.target: labels, which works across tokenizers")
