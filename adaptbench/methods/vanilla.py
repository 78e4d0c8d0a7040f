"""Vanilla fine-tuning: a new, randomly initialised classification head on the hidden state of the last
real token (padding-aware through the attention mask, whatever the pad token is), trained with
cross-entropy together with the policy's LM parameters.

``vanilla.head``: ``linear`` (default; one layer with a bias) or ``mlp`` -- dense -> ReLU -> dropout ->
output, the reference study's default ``ClassificationHead`` (its ``classifier_type: fully-connected``).
Both are initialised N(0, init_std) with zero biases, as there.
"""

from __future__ import annotations

from torch import nn

from ..scoring import last_hidden, lm_parts
from .base import RunContext, register
from .finetune import FineTuneMethod


def classification_head(hidden: int, n_labels: int, kind: str, init_std: float, dropout: float) -> nn.Module:
    """A new head in float32 (whatever the LM's dtype), weights N(0, init_std), biases zero."""
    if kind == "linear":
        layers = [nn.Linear(hidden, n_labels)]
    else:
        layers = [nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_labels)]
    head = nn.Sequential(*layers) if len(layers) > 1 else layers[0]
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, std=init_std)
            nn.init.zeros_(layer.bias)
    return head


class HeadModel(nn.Module):
    """``forward(ids, mask)`` -> head logits from each row's last real token."""

    def __init__(self, lm: nn.Module, n_labels: int, init_std: float = 0.02, kind: str = "linear",
                 dropout: float = 0.1):
        super().__init__()
        self.lm = lm
        hidden = lm.get_output_embeddings().weight.shape[1]  # the final hidden size (after any projection)
        self.head = classification_head(hidden, n_labels, kind, init_std, dropout)

    def forward(self, input_ids, attention_mask, position_ids=None, ends=None):
        hidden = last_hidden(lm_parts(self.lm), input_ids, attention_mask, ends, position_ids=position_ids,
                             use_cache=False)
        return self.head(hidden.to(next(self.head.parameters()).dtype))


@register
class Vanilla(FineTuneMethod):
    name = "vanilla"
    description = "classification head (linear or mlp) on the last token's hidden state, trained with cross-entropy"
    trainable = ("full", "head", "bitfit", "lora")

    def build(self, ctx: RunContext) -> nn.Module:
        cfg = ctx.loaded.model.config
        std = getattr(cfg, "initializer_range", None) or getattr(cfg, "init_std", None) or 0.02
        settings = ctx.spec.vanilla
        kind, dropout = (settings.head, settings.dropout) if settings is not None else ("linear", 0.1)
        ctx.info["head"] = kind
        return HeadModel(ctx.loaded.model, len(ctx.task.labels.names), std, kind, dropout)
