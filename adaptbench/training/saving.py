"""Saving adapted weights in the formats people load them with.

lora, cartridge: the PEFT adapter folder (``PeftModel.from_pretrained(base, path)``); bitfit: a small safetensors
file of the trained biases; full: ``save_pretrained`` of the whole model and tokenizer; a vanilla
classification head: its own safetensors file.
"""

from __future__ import annotations

import json
import os

from safetensors.torch import save_file
from torch import nn

from ..models.loading import save_plain


def save_adapted(model: nn.Module, policy: str, run_dir: str, tokenizer) -> dict:
    folder = os.path.join(run_dir, "weights")
    os.makedirs(folder, exist_ok=True)
    saved = {}
    if policy in ("lora", "cartridge"):
        model.lm.save_pretrained(os.path.join(folder, "adapter"))
        saved[f"{policy}_adapter"] = os.path.join(folder, "adapter")
    elif policy == "bitfit":
        biases = {n: p.detach().contiguous().cpu() for n, p in model.lm.named_parameters() if p.requires_grad}
        path = os.path.join(folder, "bitfit_biases.safetensors")
        save_file(biases, path, metadata={"format": "pt", "parameters": json.dumps(sorted(biases))})
        saved["bitfit_biases"] = path
    elif policy == "full":
        save_plain(model.lm, tokenizer, os.path.join(folder, "model"))
        saved["model"] = os.path.join(folder, "model")
    if getattr(model, "head", None) is not None:
        path = os.path.join(folder, "classifier_head.safetensors")
        save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()}, path)
        saved["classifier_head"] = path
    return saved
