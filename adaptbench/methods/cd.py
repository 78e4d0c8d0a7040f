"""Context distillation (CD): a student that never sees the context learns what the teacher does with it.

The teacher (by default the student's own model, before training) reads a context -- the data seed's
k demonstrations, or any text from ``cd.context: file:PATH`` -- followed by each distillation input,
and gives its distribution over the verbalizer tokens (``cd.target: labels``) or over the whole
vocabulary (``cd.target: vocab``) at the answer position.  The student reads the input alone and is
trained on ``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(gold)`` (Snell et al., 2022;
Askell et al., 2021), so at inference it needs no context at all.

Distillation inputs are the labelled sample and ``cd.unlabeled`` further inputs from the train pool.
No labelled input is scored by a teacher that has it among its demonstrations: each gets a
leave-one-out context (the other k - 1 demonstrations); unlabelled inputs share the full context.
By default the teacher's distributions are computed once, with the demonstration-prefix KV cache, and
stored with the run; the teacher is freed before the student trains.  ``cd.teacher_cache: false``
scores a separate teacher online in every batch instead (context + input as one sequence), to compare.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import torch
from torch import nn

from ..config import RunSpec
from ..errors import ConfigError, DataError, RunSkipped
from ..metrics import eval_set_metrics
from ..prompts import PromptEncoder
from ..sampling import unlabeled_sample
from ..scoring import PrefixCache, lm_parts, log_softmax, prefix_cache_unsupported, score
from ..training import TrainItem
from .base import Predictions, RunContext, register
from .finetune import FineTunedPredictor, FineTuneMethod
from .icl import ICLPredictor
from .pbft import VerbalizerModel


def context_file(setting: str, config_dir: str) -> str | None:
    """The path of ``cd.context: file:PATH`` (relative to the config), or None for demonstrations."""
    if setting == "demonstrations":
        return None
    if not setting.startswith("file:"):
        raise ConfigError(f"cd.context must be 'demonstrations' or 'file:PATH', got {setting!r}")
    return os.path.join(config_dir, setting[len("file:"):])


def read_context_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise DataError(f"cd.context: cannot read {path}: {e.strerror}") from None
    if not text.strip():
        raise DataError(f"cd.context: {path} is empty")
    return text


class Teacher:
    """A teacher model with its own tokenizer, the contexts it reads, and the inputs it scores."""

    def __init__(self, ctx: RunContext, loaded, inputs: list, n_labelled: int):
        settings = ctx.spec.cd
        self.loaded = loaded
        self.encoder = PromptEncoder(loaded.tokenizer, ctx.encoder.prompt, ctx.task.labels.names)
        self.parts = lm_parts(loaded.model)
        self.cache_ok = prefix_cache_unsupported(loaded.model.config) is None  # no KV reuse with sliding windows
        self.temperature = settings.temperature
        self.vocab = settings.target == "vocab"
        path = context_file(settings.context, ctx.config_dir)
        if path is None:
            sample = ctx.sample
            # labelled input i (== sample[i]) gets the context without itself
            keys = [("loo", i) for i in range(n_labelled)] + [("full", 0)] * (len(inputs) - n_labelled)
            texts = {("full", 0): self.encoder.context_text(sample)}
            texts.update({("loo", i): self.encoder.context_text(sample[:i] + sample[i + 1:]) for i in range(n_labelled)})
        else:
            texts = {("full", 0): read_context_file(path) + ctx.encoder.prompt.separator}
            keys = [("full", 0)] * len(inputs)
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

    def prefix_cache(self, prefix: list[int]) -> PrefixCache | None:
        """The prefix's KV cache where the model allows one (else scoring joins prefix and query)."""
        return PrefixCache.encode(self.parts, prefix) if prefix and self.cache_ok else None

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
        for key, positions in groups.items():
            prefix = self.contexts[key][:self.shared[key]]
            queries = [self.queries[indices[p]] for p in positions]
            cache = self.prefix_cache(prefix) if cached else None
            s = score(self.parts, queries, self.encoder.label_token_ids, pad, prefix_ids=prefix, prefix_cache=cache,
                      batch_size=8, full_vocab=self.vocab, on_batch=progress)
            out[positions] = self._distribution(s)
        return out


def check_vocab_target(ctx: RunContext, teacher_tokenizer) -> None:
    if ctx.spec.cd.target == "vocab" and teacher_tokenizer.get_vocab() != ctx.loaded.tokenizer.get_vocab():
        raise ConfigError(f"cd.target: vocab needs teacher and student to share one tokenizer; the teacher's "
                          f"vocabulary ({len(teacher_tokenizer)} tokens) differs from the student's "
                          f"({len(ctx.loaded.tokenizer)}): use cd.target: labels, which works across tokenizers")


@register
class ContextDistillation(FineTuneMethod):
    name = "cd"
    description = "context distillation: a student without the context learns the teacher's distribution with it"

    @classmethod
    def preflight(cls, spec: RunSpec, config_dir: str) -> None:
        path = context_file(spec.cd.context, config_dir)
        if path is not None:
            read_context_file(path)

    def build(self, ctx: RunContext) -> nn.Module:
        return VerbalizerModel(ctx.loaded.model, ctx.encoder.label_token_ids,
                               vocab_in_training=ctx.spec.cd.target == "vocab")

    def items(self, ctx: RunContext) -> list[TrainItem]:
        """Distillation inputs with their teacher distributions (cached), or with their index (online)."""
        extra = unlabeled_sample(ctx.pool, ctx.spec.cd.unlabeled, ctx.spec.data_seed, ctx.sample)
        inputs = list(ctx.sample) + extra
        gold = [ex.label for ex in ctx.sample] + [-1] * len(extra)
        targets, keep = self._teacher(ctx, inputs, gold, n_unlabelled=len(extra))
        queries = [ctx.encoder.query_ids(ex) for ex in inputs]
        if targets is None:  # online: the loss asks the teacher for these inputs when it sees them
            return [TrainItem(queries[i], torch.tensor([float(i), float(gold[i])])) for i in keep]
        return [TrainItem(queries[i], torch.cat([torch.from_numpy(t), torch.tensor([float(gold[i])])]))
                for t, i in zip(targets, keep)]

    def _teacher(self, ctx: RunContext, inputs: list, gold: list[int], n_unlabelled: int):
        """Score the inputs with the teacher once (returns the targets) or keep it for online scoring."""
        settings = ctx.spec.cd
        teacher_spec = settings.teacher or ctx.spec.model
        self.online = None
        if settings.teacher_cache and teacher_spec == ctx.spec.model:
            loaded = ctx.loaded  # the student's own model, not trained yet: nothing to load
        else:
            with ctx.costs.phase("load_teacher"):
                loaded = ctx.load_model(teacher_spec)
        with ctx.costs.phase("teacher") as phase:
            check_vocab_target(ctx, loaded.tokenizer)
            teacher = Teacher(ctx, loaded, inputs, len(ctx.sample))
            keep = [i for i, ok in enumerate(teacher.fits) if ok]
            ctx.info.update(teacher=loaded.source, teacher_dtype=str(loaded.dtype).replace("torch.", ""),
                            context_tokens=len(teacher.contexts[("full", 0)]),
                            leave_one_out=settings.context == "demonstrations", distill_labelled=len(ctx.sample),
                            distill_unlabelled=n_unlabelled, distill_dropped=len(inputs) - len(keep))
            if settings.teacher_eval:
                self.teacher_preds = self._teacher_eval(ctx, teacher)
            if not settings.teacher_cache:
                self.online = teacher
                return None, keep
            with ctx.progress("teacher", len(keep)) as advance:
                targets = teacher.targets(keep, cached=True, progress=advance)
            phase.tokens = sum(len(teacher.queries[i]) for i in keep) + sum(map(len, teacher.contexts.values()))
            self._save_targets(ctx, targets, keep, gold)
        del teacher, loaded  # a separate teacher is freed before the student trains
        gc.collect()
        return targets, keep

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(gold), CE over inputs with a gold label."""
        settings = self.settings
        gold = target[:, -1].long()
        if self.online is not None:  # score the teacher now, for this batch
            idx = target[:, 0].long().tolist()
            with torch.no_grad():
                probs = torch.from_numpy(self.online.targets(idx, cached=False)).to(logits.device)
        else:
            probs = target[:, :-1]
        t = settings.temperature
        kl = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=-1), probs, reduction="batchmean")
        loss = settings.alpha * t * t * kl
        has_gold = gold >= 0
        if settings.alpha < 1 and has_gold.any():
            # labels target: logits over the verbalizer tokens; vocab: over the vocabulary, gold = its token
            gold_ids = self.label_ids[gold[has_gold]] if settings.target == "vocab" else gold[has_gold]
            loss = loss + (1 - settings.alpha) * nn.functional.cross_entropy(logits[has_gold], gold_ids)
        return loss

    def fit(self, ctx: RunContext):
        self.settings = ctx.spec.cd
        self.label_ids = torch.tensor(ctx.encoder.label_token_ids, device=ctx.loaded.device)
        self.teacher_preds = None
        predictor = super().fit(ctx)
        if self.online is not None:
            del self.online
            self.online = None
            gc.collect()
        return predictor

    def predictor(self, ctx: RunContext, model: nn.Module, stored) -> FineTunedPredictor:
        return StudentPredictor(ctx, model, stored, self.teacher_preds)

    def _teacher_eval(self, ctx: RunContext, teacher: Teacher) -> dict[str, np.ndarray]:
        """The teacher's own ICL predictions (full context) on every eval set: a reference point."""
        context = teacher.contexts[("full", 0)]
        icl = ICLPredictor(teacher.loaded, teacher.encoder, teacher.texts[("full", 0)], context,
                           teacher.prefix_cache(context),
                           ctx.runtime.batch_size, ctx.progress, label="teacher")
        preds = {name: icl.predict(examples, name).labels for name, _, examples in ctx.evals}
        ctx.info["teacher_metrics"] = {name: eval_set_metrics(eval_set, examples, preds[name])
                                       for name, eval_set, examples in ctx.evals}
        return preds

    def _save_targets(self, ctx: RunContext, targets: np.ndarray, keep: list[int], gold: list[int]) -> None:
        if not ctx.out_dir:
            return
        from safetensors.numpy import save_file

        os.makedirs(ctx.out_dir, exist_ok=True)
        path = os.path.join(ctx.out_dir, "teacher_targets.safetensors")
        save_file({"targets": targets, "input": np.array(keep), "gold": np.array([gold[i] for i in keep])}, path,
                  metadata={"target": ctx.spec.cd.target, "temperature": str(ctx.spec.cd.temperature)})
        ctx.info["teacher_targets"] = path


class StudentPredictor(FineTunedPredictor):
    """Predicts as PBFT; where the teacher was evaluated too, records how often the two agree."""

    def __init__(self, ctx, model, stored, teacher_preds: dict[str, np.ndarray] | None):
        super().__init__(ctx, model, stored)
        self.teacher_preds = teacher_preds

    def predict(self, examples, name: str) -> Predictions:
        pred = super().predict(examples, name)
        if self.teacher_preds is not None and name in self.teacher_preds:
            student, teacher = pred.labels, self.teacher_preds[name]
            both = (student >= 0) & (teacher >= 0)
            self.ctx.info.setdefault("agreement", {})[name] = {
                "n": int(both.sum()), "agreement": float((student[both] == teacher[both]).mean()) if both.any() else None}
        return pred
