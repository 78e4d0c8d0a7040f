"""Weights in float32 for training, low precision only where it is safe: in the compute (autocast).

AdamW updating bfloat16 weights in place loses most updates: at lr 1e-5 an update of a weight of
size 0.02 is ~5e-4 of it, below bfloat16's resolution (2^-8 = 4e-3 relative), so it rounds away
(a one-step check changed ~16% of such weights and no LayerNorm weight).  Mixed-precision training
therefore keeps float32 *master* weights and runs the forward/backward in bf16/fp16 under autocast --
what accelerate's ``mixed_precision`` and the reference study's DeepSpeed fp16 do.  So a training run
loads its model in float32 unless the config names another dtype, and refuses trainable parameters
that are not float32 (a frozen base in bf16 under LoRA is fine: peft keeps the adapters in float32).
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch

from ..errors import AdaptbenchError
from ..config.settings import ModelSpec
from ..models.loading import auto_dtype

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_model_spec(spec: ModelSpec) -> ModelSpec:
    """The spec a training run loads: ``dtype: auto`` becomes float32 master weights (compute precision
    is ``train.mixed_precision``'s); an explicit dtype is kept (and checked by :func:`check_master_weights`)."""
    return spec.model_copy(update={"dtype": "float32"}) if spec.dtype == "auto" else spec


def resolved_mixed_precision(setting: str, device_type: str) -> str:
    """What ``train.mixed_precision: auto`` means on a device: bf16 autocast on a CPU where ``model.dtype: auto``
    is bfloat16 (``ADAPTBENCH_CPU_BF16=1`` and AMX or AVX512-BF16), else none -- on a GPU too, as before
    ``auto`` existed (set bf16 or fp16 there).  Never fp16 by itself: its loss scaling is a knowing choice."""
    if setting != "auto":
        return setting
    return "bf16" if device_type == "cpu" and auto_dtype(device_type) == "bfloat16" else "no"


def with_resolved_precision(spec, device_type: str):
    """The run as it executes: ``train.mixed_precision: auto`` replaced by what the planner resolved it to
    (``spec.resolved``), so training, evaluation points and the trained model's predictions all use one
    value.  Its run id is not the run's: keep the planned spec for anything that names the run."""
    train = spec.train
    if train is None or train.mixed_precision != "auto":
        return spec
    value = (spec.resolved or {}).get("mixed_precision") or resolved_mixed_precision("auto", device_type)
    return spec.model_copy(update={"blocks": {**spec.blocks, "train": train.model_copy(
        update={"mixed_precision": value})}})


def check_master_weights(model: torch.nn.Module) -> None:
    """Refuse trainable parameters that are not float32, naming a few and what to do instead."""
    low = [(n, p.dtype) for n, p in model.named_parameters() if p.requires_grad and p.dtype != torch.float32]
    if not low:
        return
    names = ", ".join(f"{n} ({str(d).replace('torch.', '')})" for n, d in low[:3])
    raise AdaptbenchError(
        f"{len(low)} trainable parameter tensors are not float32 (e.g. {names}): the optimizer would update them "
        f"in low precision, where most updates at fine-tuning learning rates round away. Load the model in "
        f"float32 (model.dtype: auto or float32) and set train.mixed_precision: bf16 (or fp16 on CUDA) for "
        f"low-precision compute; LoRA on a bfloat16 base is fine (its adapters are float32)")


def compute_dtype(weights: torch.dtype, mixed_precision: str) -> torch.dtype:
    """The dtype matmuls run in: the autocast dtype under mixed precision, else the weights'."""
    return AUTOCAST.get(mixed_precision, weights)


def autocast(device: torch.device, mixed_precision: str):
    """The same autocast accelerate applies in training, for scoring the trained model afterwards (so the
    final predictions are computed as the evaluation points during training were)."""
    mixed_precision = resolved_mixed_precision(mixed_precision, device.type)
    if mixed_precision not in AUTOCAST:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST[mixed_precision])


class ObservedDtype:
    """The dtype a model's matrix products really ran in: the output of its first linear layer in the first
    forward pass that runs while this is open (a setting says what autocast should do; this says what it did)."""

    def __init__(self, model: torch.nn.Module):
        self.dtype: torch.dtype | None = None
        linear = next((m for m in model.modules() if isinstance(m, torch.nn.Linear)), None)
        self._handle = linear.register_forward_hook(self._seen) if linear is not None else None

    def _seen(self, module, inputs, output) -> None:
        if self.dtype is None and isinstance(output, torch.Tensor):
            self.dtype = output.dtype

    def close(self) -> str | None:
        """Stop watching; the dtype seen (its name), or None if no linear layer ran."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return dtype_name(self.dtype) if self.dtype is not None else None


@contextmanager
def observed_compute(phase, model):
    """Record in a cost phase the dtype its first matmul ran in (``extra.observed_compute_dtype``)."""
    observed = ObservedDtype(model) if isinstance(model, torch.nn.Module) else None
    try:
        yield
    finally:
        seen = observed.close() if observed is not None else None
        if seen:
            phase.extra["observed_compute_dtype"] = seen


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def annotate_phases(costs: dict, weights: torch.dtype, mixed_precision: str | None,
                    teacher: torch.dtype | None = None) -> None:
    """Give every phase of a record its ``weights_dtype`` and ``compute_dtype``: the dtype a phase observed
    its matmuls run in (``extra.observed_compute_dtype``: training, the trained model's predictions), else
    what the settings give -- training, evaluation points and the trained model's predictions compute under
    the run's autocast; a separate teacher in its own dtype; everything else in the weights' dtype."""
    trained = compute_dtype(weights, mixed_precision or "no")
    for name, phase in costs.items():
        w = teacher if name in ("teacher", "load_teacher") and teacher is not None else weights
        autocast_phase = mixed_precision in AUTOCAST and (name in ("train", "eval_points") or name.startswith("predict:"))
        phase["weights_dtype"] = dtype_name(w)
        # where the phase observed its matmuls' dtype (ObservedDtype), that is what it says
        phase["compute_dtype"] = phase.get("extra", {}).get("observed_compute_dtype") or dtype_name(
            trained if autocast_phase else w)
