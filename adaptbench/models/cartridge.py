"""A KV-prefix student (Eyuboglu et al., 2025, "Cartridges"), through PEFT's ``CartridgeConfig``.

A cartridge is a trained KV cache of ``num_virtual_tokens`` positions in front of every input: the
student reads its input as if those positions held a (compressed) context.  PEFT keeps the prefix as a
parameter (``prompt_embeddings``, saved as a PEFT adapter) and builds the cache with ``get_prompt``;
adaptbench's scoring and training call the base model's backbone directly (:func:`lm_parts`), so
:class:`CartridgeBackbone` puts the cache in front there: the attention mask widened by the prefix, the
input's positions after it.  Initialised from a text's first tokens (the paper's best option: the
prefix is then exactly that text's KV cache), the student at step 0 reads its input as the base model
reads text[:p] + input; the first ``num_frozen_tokens`` positions stay frozen (an attention sink).

Greedy generation goes through the base model with a copy of the cache (:func:`generate`): PEFT 0.21's
own ``generate`` for a cartridge gave other tokens than its forward on transformers 5.x.
"""

from __future__ import annotations

import torch
from torch import nn


def is_cartridge(model: nn.Module) -> bool:
    """A PEFT model whose active adapter is a cartridge."""
    config = getattr(model, "active_peft_config", None)
    return config is not None and str(getattr(config, "peft_type", "")).endswith("CARTRIDGE")


def prefix_length(model: nn.Module) -> int:
    return model.active_peft_config.num_virtual_tokens


class CartridgeBackbone(nn.Module):
    """The base backbone reading after the cartridge's KV prefix (see the module doc)."""

    def __init__(self, peft_model: nn.Module, backbone: nn.Module, cache_kwarg: str):
        super().__init__()
        self.peft_model, self.backbone, self.cache_kwarg = peft_model, backbone, cache_kwarg
        self.p = prefix_length(peft_model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, **kwargs):
        for name in ("cache", "past_key_values"):
            if kwargs.pop(name, None) is not None:
                raise ValueError("a cartridge student reads after its own KV prefix; it takes no other cache")
        kwargs.pop("use_cache", None)
        n = input_ids.shape[0]
        if attention_mask is not None:
            if attention_mask.dim() != 2:
                raise ValueError("a cartridge student takes 2D attention masks (its batches are not packed)")
            attention_mask = torch.cat([attention_mask.new_ones(n, self.p), attention_mask], dim=1)
        if position_ids is not None:
            position_ids = position_ids + self.p
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             use_cache=False, **{self.cache_kwarg: self.peft_model.get_prompt(batch_size=n)}, **kwargs)


def initialize_from_ids(peft_model: nn.Module, ids: list[int]) -> None:
    """The prefix := the base model's KV cache of ``ids[:p]`` (PEFT's initialiser, given our tokens: the
    context as the teacher reads it, start tokens included)."""
    from peft.tuners.cartridge.utils import initialize_kv_prefix_from_past_key_values

    p = prefix_length(peft_model)
    base = peft_model.get_base_model()
    device = next(base.parameters()).device
    with torch.no_grad():
        out = base(input_ids=torch.tensor([ids[:p]], device=device), use_cache=True)
    initialize_kv_prefix_from_past_key_values(peft_model, past_key_values=out.past_key_values, num_virtual_tokens=p)


def generate(peft_model: nn.Module, tokenizer, ids: list[int], max_new_tokens: int, cache_kwarg: str) -> list[int]:
    """Greedy continuation of ``ids`` after the cartridge (token ids of the continuation)."""
    base = peft_model.get_base_model()
    device = next(base.parameters()).device
    p = prefix_length(peft_model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    full = torch.tensor([[pad] * p + list(ids)], device=device)  # the prefix's positions: held by the cache
    with torch.inference_mode():
        out = base.generate(input_ids=full, attention_mask=torch.ones_like(full), max_new_tokens=max_new_tokens,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id,
                            **{cache_kwarg: peft_model.get_prompt(batch_size=1)})
    return out[0, full.shape[1]:].tolist()
