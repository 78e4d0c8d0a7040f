"""Context distillation (CD): a student that never sees the context learns what the teacher does with it.

The teacher (by default the student's own model, before training) reads a context -- the data seed's
k demonstrations, a text file or a conversation -- followed by each distillation input; the student
reads the input alone and learns the teacher's distribution, so at inference it needs no context
(Askell et al., 2021; Snell et al., 2022).  ``cd.target``:

- ``labels`` / ``vocab``: the distribution at the answer position of a classification prompt, over the
  verbalizer tokens or the whole vocabulary (:mod:`.labels`); loss ``alpha * T^2 * KL + (1 - alpha) * CE(gold)``;
- ``sequence``: the next-token distribution at every token of every input (:mod:`.sequence`), kept as
  top-k targets; inputs from ``cd.inputs`` (split into distilled and held-out inputs) or the task's
  examples; the run reports how much of the context's effect the student recovered on held-out inputs
  (:mod:`.heldout`).

By default the teacher's distributions are computed once, with the context's KV cache, and stored
with the run; the teacher is freed before the student trains.  Encoder-decoder teachers and students
(:mod:`adaptbench.seq2seq`) take labels / vocab targets, the context in the teacher's encoder and no
KV cache; sequence targets need causal LMs and refuse them.  ``cd.teacher_cache: false`` (labels /
vocab) scores a separate teacher online in every batch instead, to compare.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import torch
from torch import nn

from ..._util import distributed
from ..._util.files import owned_temp
from ...config.schema import RunSpec
from ...data.sampling import unlabeled_sample
from ...data.contexts import parse_context_setting
from ...errors import AdaptbenchError, ConfigError
from ...scoring.scores import Scores
from ...training.loop import TrainItem
from ...training.precision import dtype_name, observed_compute
from ..base import RunContext, register
from ..finetune import FineTunedPredictor, FineTuneMethod
from ..pbft import VerbalizerModel
from .arms import arm_name, local_embedding_model
from .reuse import TARGETS_FILE, lookup, mark_complete, note_reused, readings_key, report_rejected
from .context import CODE_PREFIX, check_inputs
from .info import CDInfo
from .labels import FULL, Teacher, check_same_tokenizer, teacher_texts
from .sequence_run import SequenceDistillation, check_causal
from .settings import SELF_STUDY, CDSettings


#: What a ``cd.target: sequence`` run computes, as a version in its identity (``resolved.cd_sequence``), so
#: that records computed otherwise are not reused: 2 -- the teacher reads context + input as one text, the
#: held-out measure includes the teacher's replies, a chat context's replies are distilled by default
#: (1, unrecorded: the input's tokens appended to the context's).  Other runs' ids do not change.
SEQUENCE_CD_VERSION = 2


@register
class ContextDistillation(FineTuneMethod):
    name = "cd"
    description = "context distillation: a student without the context learns the teacher's distribution with it"
    settings = CDSettings
    info = CDInfo

    @classmethod
    def preflight(cls, spec: RunSpec, config_dir: str) -> None:
        check_inputs(spec, config_dir)
        if spec.cd.target == "sequence" and not spec.cd.teacher_cache:
            raise ConfigError("cd.teacher_cache: false (an online teacher) is for labels/vocab targets; sequence "
                              "targets are always computed once with the context's KV cache")

    @classmethod
    def models(cls, spec: RunSpec) -> list:
        return [spec.model] + ([spec.cd.teacher] if spec.cd.teacher is not None else [])

    @classmethod
    def files(cls, spec: RunSpec, config_dir: str) -> dict[str, str]:
        found = {}
        try:
            source = parse_context_setting(spec.cd.context, config_dir)
        except AdaptbenchError:
            source = None  # refused with its message when the run's inputs are checked
        if source is not None and source.path:
            found["cd.context"] = source.path
        if spec.cd.inputs and spec.cd.inputs != SELF_STUDY:
            found["cd.inputs"] = spec.cd.inputs.removeprefix(CODE_PREFIX)
        if spec.cd.niah is not None and spec.cd.niah.haystack:
            found["cd.niah.haystack"] = spec.cd.niah.haystack
        for arm in spec.cd.arms or []:  # a local embedding model: other weights are another run
            local = local_embedding_model(arm, config_dir)
            if local:
                found[f"cd.arms.{arm_name(arm)}.embedding_model"] = os.path.abspath(local)
        return found

    @classmethod
    def resolved(cls, spec: RunSpec) -> dict:
        return {"cd_sequence": SEQUENCE_CD_VERSION} if spec.cd.target == "sequence" else {}

    @classmethod
    def task_needed(cls, spec: RunSpec) -> str | None:
        if spec.cd.target == "sequence":
            return None
        return f"cd.target: {spec.cd.target} distils the answer position of a task's examples"

    @classmethod
    def api_prompts(cls, spec: RunSpec, prompt, sample: list, evals: list) -> list[str]:
        """The eval queries, and the teacher's leave-one-out contexts over the sample (unlabelled inputs:
        about as many again)."""
        loo = [prompt.context(sample[:i] + sample[i + 1:]) + prompt.query(ex) for i, ex in enumerate(sample)]
        return super().api_prompts(spec, prompt, sample, evals) + loo

    def build(self, ctx: RunContext) -> nn.Module:
        if self.sequence is not None:
            return self.sequence.build(ctx)
        return VerbalizerModel(ctx.loaded.model, ctx.encoder.label_token_ids,
                               vocab_in_training=ctx.spec.cd.target == "vocab")

    def context_ids(self, ctx: RunContext) -> list[int]:
        """A cartridge starts from the context as the teacher read it (sequence targets: the tokens every
        reading shared; answer-position targets: the whole context)."""
        if self.sequence is not None and self.sequence.prefix:
            return self.sequence.prefix
        return ctx.encoder.encode(teacher_texts(ctx, 0, 0, ctx.loaded.tokenizer)[0][FULL])

    def items(self, ctx: RunContext) -> list[TrainItem]:
        """Distillation inputs with their teacher distributions (cached), or with their index (online)."""
        if self.sequence is not None:
            return self.sequence.items(ctx, self._load_teacher(ctx))
        extra = unlabeled_sample(ctx.pool, ctx.spec.cd.unlabeled, ctx.spec.data_seed, ctx.sample)
        inputs = list(ctx.sample) + extra
        gold = [ex.label for ex in ctx.sample] + [-1] * len(extra)
        queries = [ctx.encoder.query_ids(ex) for ex in inputs]
        targets, keep = self._teacher(ctx, inputs, gold, len(extra), queries)
        if targets is None:  # online: the loss asks the teacher for these inputs when it sees them
            return [TrainItem(queries[i], torch.tensor([float(i), float(gold[i])])) for i in keep]
        return [TrainItem(queries[i], torch.cat([torch.from_numpy(t), torch.tensor([float(gold[i])])]))
                for t, i in zip(targets, keep)]

    def _teacher(self, ctx: RunContext, inputs: list, gold: list[int], n_unlabelled: int, queries: list):
        """Score the inputs with the teacher once (returns the targets) or keep it for online scoring; a rerun
        of a killed attempt that finished that pass reuses its targets (:mod:`.reuse`)."""
        settings = ctx.spec.cd
        loaded = self._load_teacher(ctx)
        with ctx.costs.phase("teacher") as phase, ctx.compute(loaded), observed_compute(phase, loaded.model):
            if settings.target == "vocab":
                check_same_tokenizer(ctx, loaded.tokenizer)
            teacher = Teacher(ctx, loaded, inputs, len(ctx.sample))
            keep = [i for i, ok in enumerate(teacher.fits) if ok]
            local = teacher.model.capabilities.training is None  # weights here: a dtype, a context in tokens
            ctx.info.update(teacher=loaded.source, teacher_dtype=dtype_name(loaded.dtype) if local else None,
                            context_tokens=teacher.scorer.context_tokens(FULL),
                            leave_one_out=settings.context == "demonstrations", distill_labelled=len(ctx.sample),
                            distill_unlabelled=n_unlabelled, distill_dropped=len(inputs) - len(keep))
            if settings.teacher_eval:
                self.teacher_preds = teacher.evaluate(ctx)
            if not settings.teacher_cache:
                self.online = teacher
                return None, keep
            key = readings_key(ctx.spec.run_id, [], [(queries[i], 0) for i in keep])
            targets = self._reused(ctx, key, keep, phase)
            if targets is None:
                with ctx.progress("teacher", len(keep)) as advance:
                    targets = teacher.targets(keep, cached=True, progress=advance)
                phase.tokens = teacher.tokens
                self._save_targets(ctx, targets, keep, gold, key, teacher.tokens)
        del teacher, loaded  # a separate teacher is freed before the student trains
        gc.collect()
        return targets, keep

    def _load_teacher(self, ctx: RunContext):
        """The teacher: the student's own model before training (nothing to load), or a model of its own."""
        teacher_spec = ctx.spec.cd.teacher or ctx.spec.model
        if ctx.spec.cd.teacher_cache and teacher_spec == ctx.spec.model:
            return ctx.loaded
        with ctx.costs.phase("load_teacher"):
            return ctx.load_model(teacher_spec)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(gold), CE over inputs with a gold label."""
        if self.sequence is not None:
            return self.sequence.loss(logits, target)
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
        self.online = None
        self.sequence = SequenceDistillation(ctx.spec.cd) if ctx.spec.cd.target == "sequence" else None
        if self.sequence is not None:
            check_causal(ctx.loaded, "student")
        predictor = super().fit(ctx)
        if self.sequence is not None:
            self.sequence.evaluate(ctx, predictor.model)
        if self.online is not None:
            del self.online
            self.online = None
            gc.collect()
        return predictor

    def predictor(self, ctx: RunContext, model: nn.Module, stored) -> FineTunedPredictor:
        return StudentPredictor(ctx, model, stored, self.teacher_preds)

    def _save_targets(self, ctx: RunContext, targets: np.ndarray, keep: list[int], gold: list[int], key: dict,
                      tokens: int) -> None:
        """The targets file, written whole (temp + rename), and its marker for a rerun (:mod:`.reuse`)."""
        if not ctx.out_dir or not distributed.is_main():
            return
        from safetensors.numpy import save_file

        os.makedirs(ctx.out_dir, exist_ok=True)
        path = os.path.join(ctx.out_dir, TARGETS_FILE)
        tmp = owned_temp(path)
        save_file({"targets": targets, "input": np.array(keep), "gold": np.array([gold[i] for i in keep])}, tmp,
                  metadata={"target": ctx.spec.cd.target, "temperature": str(ctx.spec.cd.temperature)})
        os.replace(tmp, path)
        ctx.info.update(teacher_targets=path,
                        teacher_targets_sha256=mark_complete(path, key, ctx.costs.elapsed(), tokens))

    def _reused(self, ctx: RunContext, key: dict, keep: list[int], phase) -> np.ndarray | None:
        """A killed attempt's targets of these inputs, verified, or None (the teacher runs)."""
        path, meta = lookup(ctx.out_dir, key)
        if not meta:
            return None
        from safetensors.numpy import load_file

        stored = load_file(path)
        if stored["input"].tolist() != keep:
            report_rejected(f"{path}: targets of other inputs")
            return None
        phase.tokens = 0
        ctx.info["teacher_targets"] = path
        note_reused(ctx, phase, meta["sha256"], meta["seconds"], meta["tokens"])
        return stored["targets"]


class StudentPredictor(FineTunedPredictor):
    """Predicts as PBFT; where the teacher was evaluated too, records how often the two agree."""

    def __init__(self, ctx, model, stored, teacher_preds: dict[str, np.ndarray] | None):
        super().__init__(ctx, model, stored)
        self.teacher_preds = teacher_preds

    def predict(self, examples, name: str) -> Scores:
        pred = super().predict(examples, name)
        if self.teacher_preds is not None and name in self.teacher_preds:
            student, teacher = pred.labels, self.teacher_preds[name]
            both = (student >= 0) & (teacher >= 0)
            self.ctx.info.setdefault("agreement", {})[name] = {
                "n": int(both.sum()), "agreement": float((student[both] == teacher[both]).mean()) if both.any() else None}
        return pred
