"""Vanilla fine-tuning: a new, randomly initialised linear classification head on the hidden state of
the last real token (padding-aware through the attention mask, whatever the pad token is), trained
with cross-entropy together with the policy's LM parameters."""

from __future__ import annotations

from torch import nn

from ..scoring import last_hidden, lm_parts
from .base import RunContext, register
from .finetune import FineTuneMethod


class HeadModel(nn.Module):
    """``forward(ids, mask)`` -> head logits from each row's last real token."""

    def __init__(self, lm: nn.Module, n_labels: int, init_std: float = 0.02):
        super().__init__()
        self.lm = lm
        hidden = lm.get_output_embeddings().weight.shape[1]  # the final hidden size (after any projection)
        self.head = nn.Linear(hidden, n_labels)  # float32, whatever the LM's dtype
        nn.init.normal_(self.head.weight, std=init_std)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids, attention_mask, position_ids=None, ends=None):
        hidden = last_hidden(lm_parts(self.lm), input_ids, attention_mask, ends, position_ids=position_ids,
                             use_cache=False)
        return self.head(hidden.to(self.head.weight.dtype))


@register
class Vanilla(FineTuneMethod):
    name = "vanilla"
    description = "classification head on the last token's hidden state, trained with cross-entropy"
    trainable = ("full", "head", "bitfit", "lora")

    def build(self, ctx: RunContext) -> nn.Module:
        cfg = ctx.loaded.model.config
        std = getattr(cfg, "initializer_range", None) or getattr(cfg, "init_std", None) or 0.02
        return HeadModel(ctx.loaded.model, len(ctx.task.labels.names), std)
