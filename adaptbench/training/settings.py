"""The one training loop's settings block (``train:``), with its presets.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

from ..config.blocks import Block, register_block
from ..config.settings import Strict

# Presets fill the fields a config leaves unset.  "reference": the hyper-parameters of the reference
# study (Mosbach et al., 2023: lr 1e-5, 40 epochs, 10% warmup then linear decay, batch 32, evaluated
# every epoch).  "cpu-fast": a few quick epochs at a higher rate, for trying things on a laptop.
TRAIN_PRESETS: dict[str, dict] = {
    "reference": {"lr": 1e-5, "epochs": 40, "warmup_ratio": 0.1, "batch_size": 32, "schedule": "linear",
                  "weight_decay": 0.0, "eval_every": "epoch"},
    "cpu-fast": {"lr": 1e-4, "epochs": 4, "warmup_ratio": 0.1, "batch_size": 8, "schedule": "constant",
                 "weight_decay": 0.0, "eval_every": "end"},
}


class TrainSettings(Strict):
    """The one training loop's knobs (pbft, vanilla, cd)."""

    preset: Literal["reference", "cpu-fast"] | None = Field(
        None, description="fill unset fields from a preset: reference (the study's) or cpu-fast")
    epochs: PositiveInt = Field(40, description="passes over the few-shot sample")
    max_steps: PositiveInt | None = Field(None, description="optimizer steps; overrides epochs")
    batch_size: PositiveInt = Field(32, description="examples per optimizer step (before accumulation)")
    grad_accum: PositiveInt = Field(1, description="micro-batches per optimizer step; lowers memory")
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of steps with linear warmup")
    schedule: Literal["constant", "linear"] = Field("linear", description="after warmup: constant or linear decay")
    max_grad_norm: PositiveFloat | None = Field(1.0, description="gradient clipping; null disables it")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast through accelerate, float32 master weights; auto: bf16 on a CPU where "
                            "model.dtype auto is bfloat16 (ADAPTBENCH_CPU_BF16=1), else no")
    eval_every: Literal["end", "epoch"] | PositiveInt = Field(
        "end", description="evaluate all eval sets at the end only, every epoch, or every N steps "
                           "(learning curves in the record)")
    select: Literal["last", "best", "oracle"] = Field(
        "last", description="which evaluation point is reported: last (as the reference study), best "
                            "in-domain accuracy, or best mean OOD accuracy (an oracle, reported as such)")
    freeze_embeddings: bool = Field(False, description="keep token/position embeddings (and a tied LM head) fixed")
    save: bool = Field(False, description="save the adapted weights in the run folder")
    checkpoint_every: PositiveInt | None = Field(
        None, description="write a checkpoint every N optimizer steps (a killed run resumes from its last one); "
                          "not part of the run's identity", json_schema_extra={"identity": False})
    checkpoint_minutes: NonNegativeFloat | None = Field(
        None, description="write a checkpoint when this many minutes passed since the last (default 10: runs that "
                          "train for less never write one; 0: only checkpoint_every); not part of the run's identity",
        json_schema_extra={"identity": False})

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset"):
            preset = TRAIN_PRESETS.get(data["preset"])
            if preset is not None:
                data = {**preset, **data}
        return data

    @model_validator(mode="after")
    def _selection_needs_points(self):
        if self.select != "last" and self.eval_every == "end":
            raise ValueError(f"select: {self.select} needs evaluation points: set eval_every to epoch or N steps")
        return self


# every method that trains carries the train: block
register_block(Block("train", TrainSettings, lambda method, _: method.trains))
