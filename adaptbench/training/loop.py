"""The one training loop, on ``accelerate``: device placement, mixed precision, gradient accumulation.

Methods hand it a task model (``model(input_ids, attention_mask) -> (batch, n_labels) logits``),
tokenised inputs with targets, and a loss; the loop is the same for PBFT, vanilla fine-tuning and
context distillation, and the same code runs data-parallel under ``accelerate launch``.

AdamW over the trainable parameters only; linear warmup, then constant or linear decay; clipping;
batches packed without padding where the model allows (see :mod:`adaptbench.packing`), else padded
to their longest example (never to a fixed length); a non-finite loss stops the run with the step it
happened at.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader

from .._util import distributed
from ..errors import AdaptbenchError
from .checkpoint import Checkpointing, fault
from .loop_state import Loop as _Loop
from .packing import mask_dtype_for, pack
from .precision import ObservedDtype, resolved_mixed_precision
from ..scoring.core import pad_right
from .settings import TrainSettings


class TrainingDiverged(AdaptbenchError):
    """The loss became NaN or infinite."""


@dataclass
class TrainItem:
    input_ids: list[int]
    target: torch.Tensor  # a label id (long scalar) or a distribution over labels (float vector)
    label: int | None = None  # the gold label of a labelled example (what a dropped example takes away)


def collate(items: list[TrainItem], pad_id: int, packed: bool, mask_dtype: torch.dtype | None) -> dict:
    """A batch: packed rows (several examples per row) or right-padded rows, and the stacked targets."""
    seqs = [it.input_ids for it in items]
    if packed:
        inputs = pack(seqs, pad_id, mask_dtype)
        n_tokens = inputs.pop("n_tokens")
    else:
        ids, mask = pad_right(seqs, pad_id)
        inputs, n_tokens = {"input_ids": ids, "attention_mask": mask}, int(mask.sum())
    return {"inputs": inputs, "target": torch.stack([it.target for it in items]), "n_tokens": n_tokens}


@dataclass
class TrainLog:
    steps: int = 0
    epochs: float = 0.0
    tokens: int = 0  # real (unpadded) tokens of all forward passes
    padded_tokens: int = 0
    losses: list[float] = field(default_factory=list)  # one per optimizer step: mean over its micro-batches
    distributed_type: str = "NO"  # accelerate's: NO, MULTI_GPU, MULTI_CPU, FSDP, DEEPSPEED
    processes: int = 1
    history: list[dict] = field(default_factory=list)  # evaluation points
    compute_dtype: str | None = None  # what the first forward's matmuls ran in (precision.ObservedDtype)
    resumed: dict | None = None  # from_step, times, seconds_before: a killed run that went on from a checkpoint


def make_accelerator(settings: TrainSettings, device: torch.device):
    """An Accelerator for this run.  Outside a distributed launch each run may use its own mixed
    precision, so a state left by an earlier run in the same process is reset first."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DataLoaderConfiguration

    if PartialState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    mixed = resolved_mixed_precision(settings.mixed_precision, device.type)  # a run's is resolved already
    if mixed == "fp16" and device.type != "cuda":
        raise AdaptbenchError("train.mixed_precision: fp16 needs a CUDA device; use bf16 or no on CPU")
    if settings.batch_size % distributed.world_size():
        raise AdaptbenchError(f"train.batch_size {settings.batch_size} must be divisible by the number of processes "
                              f"({distributed.world_size()}): it is the global batch, split across them")
    # split_batches: train.batch_size is the global batch, whatever the number of processes
    return Accelerator(mixed_precision=mixed, gradient_accumulation_steps=settings.grad_accum,
                       cpu=device.type == "cpu", dataloader_config=DataLoaderConfiguration(split_batches=True))


def total_steps(settings: TrainSettings, n_items: int) -> int:
    per_epoch = math.ceil(math.ceil(n_items / settings.batch_size) / settings.grad_accum)
    return settings.max_steps or settings.epochs * per_epoch


def train(model: nn.Module, items: list[TrainItem], settings: TrainSettings, *, loss_fn: Callable, pad_id: int,
          seed: int, device: torch.device, evaluate: Callable[[], dict] | None = None,
          progress=None, packed: bool = False, on_step: Callable[[int, dict], None] | None = None,
          checkpoints: Checkpointing | None = None) -> TrainLog:
    """Train ``model`` in place.  ``evaluate()`` is called at the evaluation points (model in eval mode,
    no gradients) and returns the metrics to log there.  ``on_step(step, values)`` gets the loss and
    learning rate of every optimizer step and the metrics of every evaluation point (experiment trackers).
    ``checkpoints``: resume from this run's last checkpoint, and write them as due (:mod:`.checkpoint`)."""
    on_step = on_step or (lambda step, values: None)
    acc, model, opt, loader, sched, params, steps, order = _setup(model, items, settings, pad_id, seed, device, packed)
    log = TrainLog(distributed_type=str(acc.distributed_type).rsplit(".", 1)[-1], processes=acc.num_processes)
    _warn_if_not_the_engine_asked_for(log.distributed_type)
    every = settings.eval_every if isinstance(settings.eval_every, int) else None
    sharded = log.distributed_type in ("FSDP", "DEEPSPEED")  # their state is sharded: not checkpointed yet
    loop = _Loop(acc, model, opt, sched, order, log, evaluate, None if sharded else checkpoints)
    loop.resume()
    step_loss = [0.0, 0]  # this rank's sum of example losses and examples over the step's micro-batches
    model.train()
    observed = ObservedDtype(model)
    with progress("train", steps) as advance:
        advance(log.steps)
        epoch, skip = loop.epoch, loop.batches
        while log.steps < steps:
            epoch += 1
            epoch_order = order.get_state()  # the data order's generator as this epoch draws its permutation
            for i, batch in enumerate(loader):
                if i < skip:  # consumed before the checkpoint this run resumed from
                    continue
                with acc.accumulate(model):
                    loss = _micro_step(acc, model, opt, sched, params, batch, loss_fn, settings, log, observed, epoch)
                step_loss = [step_loss[0] + float(loss.detach()) * (n := len(batch["target"])), step_loss[1] + n]
                log.tokens += int(batch["n_tokens"])
                log.padded_tokens += batch["inputs"]["input_ids"].numel()
                if not acc.sync_gradients:
                    continue
                log.steps += 1
                log.epochs = epoch - 1 + (i + 1) / len(loader)
                log.losses.append(_step_loss(acc, *step_loss))
                step_loss = [0.0, 0]
                advance(1)
                loop.note()
                on_step(log.steps, {"train": {"loss": log.losses[-1], "lr": sched.get_last_lr()[0],
                                              "epoch": log.epochs}})
                if evaluate is not None and every and log.steps % every == 0:
                    loop.last_eval = _evaluate(model, evaluate, log, sched, on_step)
                if log.steps >= steps:
                    break
                loop.checkpoint_if_due(epoch, i + 1, epoch_order)
                fault("step", log.steps)
            skip = 0
            if evaluate is not None and settings.eval_every == "epoch":
                loop.last_eval = _evaluate(model, evaluate, log, sched, on_step)
    if evaluate is not None and every and loop.last_eval != log.steps:  # the final model is always a point
        _evaluate(model, evaluate, log, sched, on_step)
    log.resumed = loop.resumed
    model = acc.unwrap_model(model)
    model.eval()
    acc.free_memory()
    log.tokens, log.padded_tokens = distributed.sum_over_ranks(log.tokens, log.padded_tokens)  # all ranks' shares
    return log


def _setup(model: nn.Module, items: list[TrainItem], settings: TrainSettings, pad_id: int, seed: int,
           device: torch.device, packed: bool):
    """The accelerator, and the model, optimizer, loader and scheduler prepared by it; the trained
    parameters; the number of optimizer steps; the data order's generator."""
    from transformers import get_scheduler

    acc = make_accelerator(settings, device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise AdaptbenchError("nothing to train: the trainable policy left no parameter with requires_grad")
    # fused: one kernel over all parameters, no per-step temporaries the size of the model (the
    # multi-tensor default allocates them), on CPU and CUDA alike
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay, fused=fused or None)
    steps = total_steps(settings, len(items))
    sched = get_scheduler("linear" if settings.schedule == "linear" else "constant_with_warmup", opt,
                          num_warmup_steps=math.ceil(settings.warmup_ratio * steps), num_training_steps=steps)
    mask_dtype = mask_dtype_for(getattr(model, "lm", model)) if packed else None
    order = torch.Generator().manual_seed(seed)  # the data order: one permutation drawn per epoch
    loader = DataLoader(items, batch_size=settings.batch_size, shuffle=True,
                        collate_fn=lambda b: collate(b, pad_id, packed, mask_dtype), generator=order)
    model, opt, loader, sched = acc.prepare(model, opt, loader, sched)
    return acc, model, opt, loader, sched, params, steps, order


def _warn_if_not_the_engine_asked_for(distributed_type: str) -> None:
    for engine in ("FSDP", "DEEPSPEED"):  # asked for by the launch's accelerate config, but not what runs
        if os.environ.get(f"ACCELERATE_USE_{engine}", "").lower() == "true" and distributed_type != engine:
            warnings.warn(f"the accelerate config asks for {engine} but accelerate runs {distributed_type} "
                          f"here (FSDP and DeepSpeed need GPUs); training is plain data-parallel")


def _micro_step(acc, model, opt, sched, params, batch: dict, loss_fn: Callable, settings: TrainSettings,
                log: TrainLog, observed: ObservedDtype, epoch: int) -> torch.Tensor:
    """Forward, loss (a loss that is not finite on some rank stops every rank), backward, and -- when this
    micro-batch completes an optimizer step -- clipping, the step and the scheduler."""
    logits = model(**batch["inputs"])
    log.compute_dtype = log.compute_dtype or observed.close()
    loss = loss_fn(logits.float(), batch["target"])
    if not _finite_everywhere(loss, acc):
        raise TrainingDiverged(f"the training loss became {loss.item()} at step {log.steps + 1} "
                               f"(epoch {epoch}); try a lower train.lr or mixed_precision: no")
    acc.backward(loss)
    if acc.sync_gradients and settings.max_grad_norm:
        acc.clip_grad_norm_(params, settings.max_grad_norm)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return loss


def _finite_everywhere(loss: torch.Tensor, acc) -> bool:
    """Whether the loss is finite on every rank (all ranks stop together, none waits in a collective)."""
    flags = acc.gather(torch.isfinite(loss.detach()).float().reshape(1))  # one process: this rank's alone
    return bool(flags.min() > 0)


def _step_loss(acc, loss_sum: float, n: int) -> float:
    """The mean example loss of one optimizer step -- over all its micro-batches (each one's loss is a mean
    over its examples, so it weighs by its size), not just the last one, and over every rank's share."""
    total = acc.reduce(torch.tensor([loss_sum, float(n)], device=acc.device), reduction="sum")
    return float(total[0] / total[1])


def _evaluate(model: nn.Module, evaluate: Callable[[], dict], log: TrainLog, sched, on_step) -> int:
    """One evaluation point: metrics from ``evaluate()`` plus the mean training loss since the last one.
    Its time and memory are not training's: ``evaluate`` accounts for them (see ``CostTracker.interval``)."""
    since = log.history[-1]["step"] if log.history else 0
    recent = log.losses[since:]
    model.eval()
    with torch.no_grad():
        metrics = evaluate()
    model.train()
    log.history.append({"step": log.steps, "epoch": round(log.epochs, 4),
                        "train_loss": sum(recent) / len(recent) if recent else None,
                        "lr": sched.get_last_lr()[0], "metrics": metrics})
    on_step(log.steps, {"eval": metrics})
    return log.steps
