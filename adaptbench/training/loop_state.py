"""The training loop's state as a checkpoint holds it (:mod:`.checkpoint`), saved and put back."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .._util import distributed
from ..errors import AdaptbenchError
from .checkpoint import Checkpointing, rng_state, set_rng_state


class Loop:
    """The loop's position (epoch, micro-batches consumed, the data order's generator at the epoch's start) and
    everything else a step depends on; ``resumed`` says what a resumed run started from."""

    def __init__(self, acc, model, opt, sched, order: torch.Generator, log, evaluate,
                 checkpoints: Checkpointing | None):
        self.acc, self.model, self.opt, self.sched, self.order, self.log = acc, model, opt, sched, order, log
        self.checkpoints = checkpoints  # None: none written or resumed from (FSDP, DeepSpeed: not yet)
        self.points = getattr(evaluate, "points", None)  # the evaluation points' scores (fine-tuning's Evaluator)
        self.last_eval, self.epoch, self.batches = -1, 0, 0
        self.resumed: dict | None = None
        self._started, self._before = time.perf_counter(), 0.0

    def _trained(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.acc.unwrap_model(self.model).named_parameters() if p.requires_grad}

    def checkpoint_if_due(self, epoch: int, batches: int, epoch_order: torch.Tensor) -> None:
        """After an optimizer step: ``batches`` micro-batches of this epoch are consumed."""
        # every rank takes part: rank 0's clock decides, each rank's random generators go in
        if self.checkpoints is None or not distributed.broadcast(self.checkpoints.due(self.log.steps)):
            return
        rngs = distributed.gather(rng_state())
        if not distributed.is_main():  # the rest is the same on every rank of a data-parallel launch
            return
        log = dataclasses.asdict(self.log)
        state = {"epoch": epoch, "batches": batches, "order": epoch_order, "acc_step": self.acc.step,
                 "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "rng": rngs,
                 "log": log, "last_eval": self.last_eval,
                 "points": [{k: torch.from_numpy(v) for k, v in p.items()} for p in self.points or []],
                 "seconds": self._before + time.perf_counter() - self._started,
                 "resumes": (self.resumed or {}).get("times", 0)}
        self.checkpoints.save(self.log.steps, self._trained(), state)

    def resume(self) -> None:
        """Put back the run's newest complete checkpoint, if there is one."""
        checkpoints = self.checkpoints
        if checkpoints is None:
            return
        found = checkpoints.load() if distributed.is_main() else None  # rank 0 judges, every rank reads that one
        step = distributed.broadcast(found.step if found is not None else None)
        if step is None:
            return
        found = found or checkpoints.read(step)
        trained, state = self._trained(), found.state
        if set(found.tensors) != set(trained):
            checkpoints.rejected.append(f"checkpoint-{found.step}: it trained other parameters")
            return
        with torch.no_grad():
            for name, p in trained.items():
                p.copy_(found.tensors[name].to(p.device, p.dtype))
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"][distributed.rank()])
        self.order.set_state(state["order"])
        self.acc.step = state["acc_step"]
        for key, value in state["log"].items():
            setattr(self.log, key, value)
        if self.points is not None:
            self.points[:] = [{k: v.numpy().astype(np.float32) for k, v in p.items()} for p in state["points"]]
        elif state["points"]:
            raise AdaptbenchError("a checkpoint with evaluation points, resumed by a loop without them")
        self.last_eval, self.epoch, self.batches = state["last_eval"], state["epoch"] - 1, state["batches"]
        self._before = state["seconds"]
        self.resumed = {"from_step": found.step, "times": state["resumes"] + 1,
                        "seconds_before": round(state["seconds"], 3)}
