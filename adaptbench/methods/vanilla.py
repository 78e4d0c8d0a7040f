"""Vanilla fine-tuning: a new, randomly initialised classification head on the hidden state of the last
real token (padding-aware through the attention mask, whatever the pad token is), trained with
cross-entropy together with the policy's LM parameters.  An encoder-decoder's head reads the decoder's
first hidden state (where PBFT scores its verbalizers) or, under ``vanilla.pooling: encoder_mean``, the
mean of the encoder's states over the input's real tokens.

``vanilla.head``: ``linear`` (default; one layer with a bias) or ``mlp`` -- dense -> ReLU -> dropout ->
output, the reference study's default ``ClassificationHead`` (its ``classifier_type: fully-connected``).
Both are initialised N(0, init_std) with zero biases, as there.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from ..config.settings import Strict
from ..errors import ConfigError
from ..models.interface import lm_parts
from ..scoring.core import last_hidden
from .base import RunContext, register
from .finetune import FineTuneInfo, FineTuneMethod


class VanillaSettings(Strict):
    """Vanilla fine-tuning's new classification head."""

    head: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one layer on the last token's hidden state; mlp: dense -> ReLU -> dropout "
                              "-> output, the reference study's default ClassificationHead")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the mlp head (the reference: OPT's 0.1)")
    pooling: Literal["decoder_first", "encoder_mean"] | None = Field(
        None, description="encoder-decoder models only (T5, BART): the head reads the decoder's first hidden state "
                          "(decoder_first, the default) or the mean of the encoder's states over the input's real "
                          "tokens (encoder_mean); decoder-only models always use the last token's state, and "
                          "setting it for them is an error")


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


class VanillaInfo(FineTuneInfo):
    head: str | None = Field(None, description="linear or mlp (vanilla.head)")
    pooling: str | None = Field(None, description="what the head read: last_token, decoder_first or encoder_mean")


class HeadModel(nn.Module):
    """``forward(ids, mask)`` -> head logits from each row's answer-position state (``pooling``
    ``encoder_mean``: from the mean of an encoder-decoder's encoder states)."""

    def __init__(self, lm: nn.Module, n_labels: int, init_std: float = 0.02, kind: str = "linear",
                 dropout: float = 0.1, pooling: str = "last_token"):
        super().__init__()
        self.lm = lm
        self.pooling = pooling
        hidden = lm.get_output_embeddings().weight.shape[1]  # the final hidden size (after any projection)
        self.head = classification_head(hidden, n_labels, kind, init_std, dropout)

    def forward(self, input_ids, attention_mask, position_ids=None, ends=None):
        parts = lm_parts(self.lm)
        if self.pooling == "encoder_mean":
            hidden = parts.encoder_mean(input_ids, attention_mask)
        else:
            hidden = last_hidden(parts, input_ids, attention_mask, ends, position_ids=position_ids, use_cache=False)
        return self.head(hidden.to(next(self.head.parameters()).dtype))


def head_pooling(ctx: RunContext) -> str:
    """What the head reads: ``last_token`` (decoder-only models), ``decoder_first`` or ``encoder_mean``
    (encoder-decoders): ``vanilla.pooling`` where the model offers it, else its first pooling."""
    asked = ctx.spec.vanilla.pooling if ctx.spec.vanilla is not None else None
    offered = ctx.loaded.capabilities.poolings
    if asked is None:
        return offered[0]
    if asked not in offered:
        raise ConfigError(f"vanilla.pooling: {asked} applies to encoder-decoder models (T5, BART); "
                          f"{ctx.spec.model.name!r} offers {', '.join(offered)}: its head always reads the last "
                          f"token's hidden state -- remove vanilla.pooling for it")
    return asked


@register
class Vanilla(FineTuneMethod):
    name = "vanilla"
    settings = VanillaSettings
    info = VanillaInfo
    description = "classification head (linear or mlp) on the last token's hidden state, trained with cross-entropy"
    trainable = ("full", "head", "bitfit", "lora")

    def build(self, ctx: RunContext) -> nn.Module:
        cfg = ctx.loaded.model.config
        std = getattr(cfg, "initializer_range", None) or getattr(cfg, "init_std", None) or 0.02
        settings = ctx.spec.vanilla
        kind, dropout = (settings.head, settings.dropout) if settings is not None else ("linear", 0.1)
        ctx.info.update(head=kind, pooling=head_pooling(ctx))
        return HeadModel(ctx.loaded.model, len(ctx.task.labels.names), std, kind, dropout, ctx.info["pooling"])
