"""What PBFT, vanilla fine-tuning and context distillation share: build a task model, apply the
trainable policy, train with the one loop, evaluate at evaluation points, select one, predict."""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field
from torch import nn

from .. import __version__
from .._util import distributed
from ..errors import ConfigError, RunSkipped
from ..models.cartridge import initialize_from_ids
from ..measure.metrics import eval_set_metrics
from ..training.saving import save_adapted
from ..training.packing import packing_unsupported
from ..training.precision import ObservedDtype, check_master_weights
from ..scoring.core import backing_off, batched_logits
from ..training.policies import apply_policy
from ..training.checkpoint import DEFAULT_MINUTES, Checkpointing, items_hash, rng_state, set_rng_state
from ..training.loop import TrainItem, train
from ..scoring.scores import Scores
from .base import Method, MethodInfo, RunContext


class FineTuneInfo(MethodInfo):
    """``method_info`` of a run that trains (PBFT, vanilla, CD's student)."""

    policy: str | None = Field(None, description="the trainable policy")
    trainable_params: int | None = Field(None, description="parameters trained")
    total_params: int | None = Field(None, description="parameters of the task model (tied ones once)")
    freeze_embeddings: bool | None = Field(None, description="full: embeddings kept fixed")
    added_biases: int | None = Field(None, description="bitfit.add_biases: zero biases added to this many layers")
    lora_target_modules: list[str] | None = Field(None, description="lora: the modules adapted")
    num_virtual_tokens: int | None = Field(None, description="cartridge: positions of the trained KV prefix")
    cartridge_init: str | None = Field(None, description="cartridge: context, text or random")
    trainable_bytes: int | None = Field(None, description="bytes of the trained parameters as kept (an adapter's or "
                                        "a cartridge's size, to compare students)")
    lr: float | None = Field(None, description="the learning rate used (the policy's, else train.lr)")
    packed_batches: bool | None = Field(None, description="whether training batches were packed")
    train_examples: int | None = Field(None, description="training inputs")
    train_dropped_too_long: int | None = Field(None, description="training inputs left out: longer than the window")
    steps: int | None = Field(None, description="optimizer steps")
    train_losses: list[float] = Field(default_factory=list, description="the mean loss of every optimizer step")
    history: list[dict] = Field(default_factory=list, description="evaluation points: step, epoch, train_loss, lr, "
                                "metrics")
    selected: dict | None = Field(None, description="the reported evaluation point (mode, step, epoch)")
    distributed_type: str | None = Field(None, description="accelerate's: NO, MULTI_GPU, MULTI_CPU, FSDP, DEEPSPEED")
    processes: int | None = Field(None, description="processes of the launch")
    saved: dict | None = Field(None, description="train.save: where the adapted weights are")
    resumed_from_step: int | None = Field(None, description="a killed run resumed: the step of the checkpoint it "
                                          "went on from")
    resumes: int | None = Field(None, description="how many times the run resumed")
    train_seconds_before_resume: float | None = Field(
        None, description="training seconds the earlier attempts spent up to that checkpoint (costs.train is this "
                          "attempt's)")
    lost_steps: int | None = Field(None, description="steps the kills threw away (done after the last checkpoint "
                                   "and done again), all attempts'")
    lost_seconds: float | None = Field(None, description="their training seconds (from each killed attempt's last "
                                       "checkpoint or start to its last step)")
    checkpoints: dict | None = Field(None, description="every, minutes, written, bytes (the last one's size), "
                                     "seconds spent writing, rejected (checkpoints not used, with why), off (why none)")


#: What a cartridge student does not do: it reads after its own KV prefix, never after another cached context.
CARTRIDGE_OFF = {name: "a cartridge student reads after its own trained KV prefix, not after a cached context"
                 for name in ("prefix_cache", "shared_prefix")}


class FineTuneMethod(Method):
    """Subclasses say how the task model is built and what the training targets and loss are."""

    info = FineTuneInfo

    trains = True
    trainable = ("full", "bitfit", "lora", "cartridge")

    def build(self, ctx: RunContext) -> nn.Module:
        raise NotImplementedError

    def items(self, ctx: RunContext) -> list[TrainItem]:
        """Default: the run's sample, rendered as queries, with its gold labels."""
        return [TrainItem(ctx.encoder.query_ids(ex), torch.tensor(ex.label), ex.label) for ex in ctx.sample]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target)

    def fit(self, ctx: RunContext) -> FineTunedPredictor:
        spec, settings = ctx.spec, ctx.spec.train
        drawn = rng_state()  # what the trained parts' initialisation draws must not depend on the work
        items = self.items(ctx)  # before the model is touched (context distillation scores with it)
        set_rng_state(drawn)  # items() did: a teacher pass, its sampling, or a killed attempt's targets reused
        items = self._fitting(ctx, items)
        with ctx.costs.phase("setup"):
            model = self.build(ctx)
            ctx.info.update(apply_policy(model, spec.trainable, lora=spec.lora, bitfit=spec.bitfit,
                                         cartridge=spec.cartridge, freeze_embeddings=settings.freeze_embeddings))
            if spec.trainable == "cartridge":
                ctx.info.update(self._init_cartridge(ctx, model))
            model.to(ctx.loaded.device)
            check_master_weights(model)
        policy_settings = {"lora": spec.lora, "bitfit": spec.bitfit, "cartridge": spec.cartridge}.get(spec.trainable)
        if policy_settings is not None and policy_settings.lr is not None:
            settings = settings.model_copy(update={"lr": policy_settings.lr})
        ctx.info["lr"] = settings.lr
        evaluator = Evaluator(ctx, model) if settings.eval_every != "end" else None
        why_not = packing_unsupported(model.lm)
        packed = ctx.info["packed_batches"] = why_not is None
        ctx.info["capabilities_off"] = {**ctx.loaded.capabilities.off(), **({"packing": why_not} if why_not else {}),
                                        **(CARTRIDGE_OFF if spec.trainable == "cartridge" else {})}
        checkpoints = checkpointing(ctx, items)
        with ctx.costs.phase("train") as phase:
            log = train(model, items, settings, loss_fn=self.loss, pad_id=ctx.loaded.tokenizer.pad_token_id,
                        seed=spec.train_seed, device=ctx.loaded.device, evaluate=evaluator, progress=ctx.progress,
                        packed=packed, on_step=ctx.on_step, checkpoints=checkpoints)
            phase.tokens, phase.padded_tokens = log.tokens, log.padded_tokens
            if log.resumed:
                phase.extra["seconds_before_resume"] = log.resumed["seconds_before"]
                ctx.info.update(resumed_from_step=log.resumed["from_step"], resumes=log.resumed["times"],
                                train_seconds_before_resume=log.resumed["seconds_before"],
                                lost_steps=log.resumed.get("lost_steps"), lost_seconds=log.resumed.get("lost_seconds"))
            phase.extra.update(steps=log.steps, epochs=log.epochs)  # evaluation points: costs["eval_points"]
            if log.compute_dtype:
                phase.extra["observed_compute_dtype"] = log.compute_dtype
        if checkpoints is not None:
            ctx.info["checkpoints"] = {"every": checkpoints.every, "minutes": checkpoints.minutes,
                                       "written": checkpoints.written, "bytes": checkpoints.bytes,
                                       "seconds": round(checkpoints.seconds, 3), "rejected": checkpoints.rejected}
            if log.distributed_type in ("FSDP", "DEEPSPEED"):
                ctx.info["checkpoints"]["off"] = f"{log.distributed_type} shards the state: not checkpointed yet"
        ctx.info.update(train_examples=len(items), steps=log.steps, train_losses=[round(x, 5) for x in log.losses],
                        history=log.history, distributed_type=log.distributed_type, processes=log.processes)
        chosen = None
        if evaluator is not None:
            chosen = select(log.history, settings.select, ctx.task.name)
            ctx.info["selected"] = {"mode": settings.select, "step": log.history[chosen]["step"],
                                    "epoch": log.history[chosen]["epoch"]}
        if settings.save and ctx.out_dir:
            ctx.info["saved"] = save_adapted(model, spec.trainable, ctx.out_dir, ctx.loaded.tokenizer)
        stored = evaluator.points[chosen] if evaluator is not None else None
        return self.predictor(ctx, model, stored)

    def context_ids(self, ctx: RunContext) -> list[int]:
        """The tokens a cartridge starts from with ``cartridge.init: context``: by default the demonstrations
        rendered as ICL's context (CD: its context, as the teacher read it)."""
        return ctx.encoder.encode(ctx.encoder.context_text(ctx.sample))

    def _init_cartridge(self, ctx: RunContext, model: nn.Module) -> dict:
        """Start the KV prefix from a text's first tokens (``cartridge.init``), or leave PEFT's random one."""
        settings, p = ctx.spec.cartridge, model.lm.active_peft_config.num_virtual_tokens
        if settings.init == "random":
            return {"cartridge_init": "random"}
        if settings.init == "text" and not settings.init_text:
            raise ConfigError("cartridge.init: text needs cartridge.init_text")
        ids = self.context_ids(ctx) if settings.init == "context" else ctx.encoder.encode(settings.init_text)
        if len(ids) < p:
            raise ConfigError(f"cartridge.num_virtual_tokens: {p} is more than the {len(ids)} tokens of its "
                              f"cartridge.init {settings.init!r}; use fewer tokens or init: random")
        initialize_from_ids(model.lm, ids)
        return {"cartridge_init": settings.init}

    @staticmethod
    def _fitting(ctx: RunContext, items: list[TrainItem]) -> list[TrainItem]:
        """The training inputs that fit the model's window (the others are counted and shown, never truncated);
        a label whose every example is too long skips the run: the model would learn a task without it."""
        window = ctx.loaded.window
        kept = [it for it in items if len(it.input_ids) <= window]
        ctx.info["train_dropped_too_long"] = len(items) - len(kept)
        if not kept:
            raise RunSkipped(f"none of the {len(items)} training inputs fits the model's window of "
                             f"{window} tokens (no truncation is done)")
        names = ctx.task.labels.names
        lost = sorted({it.label for it in items if it.label is not None} - {it.label for it in kept})
        if lost:
            raise RunSkipped(f"every training example of label {', '.join(repr(names[i]) for i in lost)} is longer "
                             f"than the model's window of {window} tokens: {len(items) - len(kept)} of {len(items)} "
                             f"examples do not fit (no truncation is done)")
        return kept

    def predictor(self, ctx: RunContext, model: nn.Module, stored) -> FineTunedPredictor:
        return FineTunedPredictor(ctx, model, stored)


class Evaluator:
    """Scores every eval set at an evaluation point, keeps the logits, returns overall metrics.

    Evaluation points run in the middle of training; their time, peak memory and tokens go to a phase
    of their own, ``eval_points``, and are left out of ``train``'s (so training costs are training's)."""

    PHASE = "eval_points"

    def __init__(self, ctx: RunContext, model: nn.Module):
        self.ctx, self.model = ctx, model
        self.points: list[dict[str, np.ndarray]] = []

    def __call__(self) -> dict:
        logits, metrics = {}, {}
        with self.ctx.costs.interval(self.PHASE) as phase:
            phase.tokens = phase.padded_tokens = 0
            for name, eval_set, examples in self.ctx.evals:
                logits[name], tokens, padded = score_examples(self.ctx, self.model, examples)
                phase.tokens, phase.padded_tokens = phase.tokens + tokens, phase.padded_tokens + padded
                metrics[name] = eval_set_metrics(eval_set, examples, Scores(logits[name]).labels)["all"]
        self.points.append(logits)
        return metrics


def checkpointing(ctx: RunContext, items: list[TrainItem]) -> Checkpointing | None:
    """Where and when this run writes checkpoints (its folder; train.checkpoint_every / _minutes, default every
    10 minutes), keyed to this run: its id, its training inputs, adaptbench's version, the launch's processes."""
    settings = ctx.spec.train
    if not ctx.out_dir:
        return None
    every, minutes = settings.checkpoint_every, settings.checkpoint_minutes
    if minutes is None:
        minutes = None if every else DEFAULT_MINUTES
    key = {"run_id": ctx.spec.run_id, "items": items_hash(items), "version": __version__,
           "processes": distributed.world_size()}
    return Checkpointing(ctx.out_dir, key, every=every, minutes=minutes or None)


def select(history: list[dict], mode: str, in_domain: str) -> int:
    """Index of the reported evaluation point: last, best in-domain accuracy, or best mean OOD accuracy."""
    if mode == "last" or len(history) == 1:
        return len(history) - 1
    if mode == "best":
        values = [h["metrics"][in_domain]["accuracy"] for h in history]
    else:
        values = [np.mean([m["accuracy"] for name, m in h["metrics"].items() if name != in_domain] or [0.0])
                  for h in history]
    return int(np.argmax(values))


def score_examples(ctx: RunContext, model: nn.Module, examples, on_batch=None):
    """Task-model logits of every example (sharded over ranks under a multi-process launch); an example
    longer than the model's window is left unscored (NaN row, counted as ``n_unscored``), never cut."""
    mine = distributed.shard(len(examples))
    seqs = [ctx.encoder.query_ids(examples[i]) for i in mine]
    fits = [j for j, seq in enumerate(seqs) if len(seq) <= ctx.loaded.window]
    logits = np.full((len(mine), len(ctx.task.labels.names)), np.nan, dtype=np.float32)
    tokens = padded = 0
    if fits:
        bs = ctx.runtime.batch_size if ctx.runtime.batch_size != "auto" else 16
        logits[fits], tokens, padded = backing_off(
            lambda b: batched_logits(model, [seqs[j] for j in fits], ctx.loaded.tokenizer.pad_token_id,
                                     ctx.loaded.device, b, on_batch), bs, ctx.runtime.batch_size == "auto", ctx.info)
    return (distributed.gather_rows(mine, logits, len(examples)), *distributed.sum_over_ranks(tokens, padded))


class FineTunedPredictor:
    def __init__(self, ctx: RunContext, model: nn.Module, stored: dict[str, np.ndarray] | None):
        self.ctx, self.model, self.stored = ctx, model, stored

    def predict(self, examples, name: str) -> Scores:
        if self.stored is not None:  # scored at the selected evaluation point during training
            return Scores(self.stored[name])
        observed = ObservedDtype(self.model)
        with self.ctx.progress(f"{self.ctx.spec.method} {name}", len(examples)) as advance, \
                self.ctx.compute():  # as in training
            logits, tokens, padded = score_examples(self.ctx, self.model, examples, advance)
        return Scores(logits, None, tokens, padded, compute_dtype=observed.close())
