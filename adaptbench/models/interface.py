"""What every model kind offers the layers above it: its parts (:func:`lm_parts`) -- a causal LM's or an
encoder-decoder's (:mod:`adaptbench.models.seq2seq`).
"""

from __future__ import annotations

import inspect

import torch

from .cartridge import CartridgeBackbone, is_cartridge
from .parts import LMParts, logit_transform
from .seq2seq import seq2seq_parts


def lm_parts(model: torch.nn.Module) -> LMParts:
    """Split a ``*ForCausalLM`` (or a PEFT wrapper of one) into backbone and LM head; a cartridge's backbone
    reads after its KV prefix (:mod:`adaptbench.models.cartridge`)."""
    cartridge = model if is_cartridge(model) else None
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    head = model.get_output_embeddings()
    if head is None:
        raise TypeError(f"{type(model).__name__} has no LM head (get_output_embeddings() is None)")
    bias = getattr(model, "final_logits_bias", None)
    bias = bias.reshape(-1) if bias is not None else None
    if getattr(model.config, "is_encoder_decoder", False):
        return seq2seq_parts(model, head, logit_transform(model.config), bias)
    backbone = model.base_model
    params = inspect.signature(backbone.forward).parameters
    cache_kwarg = "cache" if "cache" in params else "past_key_values"
    if cartridge is not None:
        backbone = CartridgeBackbone(cartridge, backbone, cache_kwarg)
    return LMParts(backbone, head, cache_kwarg, logit_transform(model.config), bias)
