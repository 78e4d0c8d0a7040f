"""The training loop's state as a checkpoint holds it (:mod:`.checkpoint`), saved and put back."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch

from .._util import distributed
from ..errors import AdaptbenchError
from .checkpoint import Checkpointing, note_progress, read_progress, rng_state, set_rng_state


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
        self._began = time.time()  # this attempt's start (wall clock): what a kill before any checkpoint loses

    def note(self) -> None:
        """After every optimizer step, rank 0 notes how far this attempt got: a rerun says what the kill lost."""
        if self.checkpoints is not None and distributed.is_main():
            resumed = self.resumed or {}
            note_progress(self.checkpoints.run_folder, self.checkpoints.key, self.log.steps,
                          {"began": self._began, "resumes": resumed.get("times", 0),
                           "lost_steps": resumed.get("lost_steps", 0),
                           "lost_seconds": resumed.get("lost_seconds", 0.0)})

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
        note = read_progress(checkpoints.run_folder, checkpoints.key) if distributed.is_main() else None
        if step is None:
            if note is not None:  # killed before any checkpoint: it starts over, and says what that lost
                self.resumed = {"from_step": 0, "times": note["resumes"] + 1, "seconds_before": 0.0,
                                **lost(note, 0, None)}
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
        times = max(state["resumes"], note["resumes"] if note else 0) + 1  # a killed attempt may have resumed too
        self.resumed = {"from_step": found.step, "times": times,
                        "seconds_before": round(state["seconds"], 3), **lost(note, found.step, found.meta["time"])}


def lost(note: dict | None, from_step: int, checkpoint_time: float | None) -> dict:
    """Steps and seconds of training the kills threw away, all attempts': the last attempt's from its last
    checkpoint (or its start) to its last noted step, added to what earlier ones lost."""
    if note is None:
        return {}
    since = max(note["began"], checkpoint_time or 0.0)
    return {"lost_steps": note["lost_steps"] + max(0, note["step"] - from_step),
            "lost_seconds": round(note["lost_seconds"] + max(0.0, note["time"] - since), 3)}
