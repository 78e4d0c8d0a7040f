"""Pattern-based fine-tuning (PBFT): train the LM to put its mass on the right verbalizer token.

The input is the task pattern without demonstrations (Schick & Schuetze, 2021; the "pattern-verbalizer
fine-tuning" of the reference study).  ``pbft.loss``:

- ``verbalizer`` (default): cross-entropy over the verbalizer tokens' logits at the answer position,
  from the last hidden state and the LM-head rows of those tokens only.  The loss is over the classes
  the prediction chooses between, and no gradient is spent pushing down 50k other tokens.
- ``vocab``: cross-entropy over the whole vocabulary with the gold verbalizer token as target, as the
  reference code's ``OPTWithLMClassifier``.  Computed at the answer position only: one row of logits per
  example (hidden state times the whole LM head), never logits for every position.

Prediction either way as in ICL: argmax over the verbalizer tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from ..config.settings import Strict
from ..models.interface import lm_parts
from ..models.parts import verbalizer_logits, vocab_logits
from ..scoring.core import last_hidden
from .base import RunContext, register
from .finetune import FineTuneInfo, FineTuneMethod


class PBFTSettings(Strict):
    """Pattern-based fine-tuning."""

    loss: Literal["verbalizer", "vocab"] = Field(
        "verbalizer", description="verbalizer: cross-entropy over the verbalizer tokens' logits (the classes the "
                                  "prediction chooses between); vocab: over the whole vocabulary with the gold "
                                  "verbalizer token as target, as the reference study (its OPTWithLMClassifier)")


class PBFTInfo(FineTuneInfo):
    pbft_loss: str | None = Field(None, description="verbalizer or vocab (pbft.loss)")


class VerbalizerModel(nn.Module):
    """``forward(ids, mask)`` -> verbalizer-token logits at each row's last real token.

    ``vocab_in_training``: in training mode return the full next-token logits at that position
    instead (context distillation onto the whole vocabulary); evaluation always scores the verbalizers.
    """

    def __init__(self, lm: nn.Module, token_ids: list[int], vocab_in_training: bool = False):
        super().__init__()
        self.lm = lm
        self.head = None
        self.vocab_in_training = vocab_in_training
        self.register_buffer("token_ids", torch.tensor(token_ids), persistent=False)

    def forward(self, input_ids, attention_mask, position_ids=None, ends=None) -> torch.Tensor:
        parts = lm_parts(self.lm)
        hidden = last_hidden(parts, input_ids, attention_mask, ends, position_ids=position_ids, use_cache=False)
        if self.vocab_in_training and self.training:
            return vocab_logits(parts, hidden)
        return verbalizer_logits(parts, hidden, self.token_ids)


@register
class PBFT(FineTuneMethod):
    name = "pbft"
    settings = PBFTSettings
    info = PBFTInfo
    hints = {"head": ": pbft adds no head, it trains through the LM head's verbalizer rows"}
    description = "pattern-based fine-tuning: LM head + verbalizer tokens (loss over the verbalizers or the vocabulary)"

    def build(self, ctx: RunContext) -> nn.Module:
        self.vocab_loss = ctx.spec.pbft is not None and ctx.spec.pbft.loss == "vocab"
        ctx.info["pbft_loss"] = "vocab" if self.vocab_loss else "verbalizer"
        self.label_ids = torch.tensor(ctx.encoder.label_token_ids, device=ctx.loaded.device)
        return VerbalizerModel(ctx.loaded.model, ctx.encoder.label_token_ids, vocab_in_training=self.vocab_loss)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy; under ``pbft.loss: vocab`` the logits cover the vocabulary and the target is the
        gold label's verbalizer token."""
        if self.vocab_loss:
            return nn.functional.cross_entropy(logits, self.label_ids.to(logits.device)[target])
        return nn.functional.cross_entropy(logits, target)
