"""The pieces of a language model that scoring and training read: its backbone (final hidden states), its
output layer, what its forward does to the logits after that layer, and how to get logits of a few tokens
from a hidden state without computing the whole vocabulary.  Encoder-decoders have their own parts
(:mod:`adaptbench.models.seq2seq`): the same interface, another answer position.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class LMParts:
    """The pieces of a causal LM that verbalizer scoring needs.  Encoder-decoder models have their own
    (:class:`adaptbench.seq2seq.Seq2SeqParts`): same interface, another answer position."""

    backbone: torch.nn.Module  # returns the final (normed) hidden states
    head: torch.nn.Module  # the model's output layer (a peft LoRA layer when lm_head is adapted)
    cache_kwarg: str  # "cache" in transformers >= 5.2x, "past_key_values" before
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None  # final-logit softcapping / scaling
    logit_bias: torch.Tensor | None = None  # (vocab,) added after the head (BART's final_logits_bias)
    encoder_decoder: ClassVar[bool] = False

    def answer_states(self, ids: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor | None = None,
                      **kwargs) -> torch.Tensor:
        """Final hidden state at the last real token of each sequence, (n, hidden).

        Right-padded rows (2D ``mask``): one sequence per row, ending at ``mask.sum(1) - 1``.  Packed rows
        (4D ``mask``, see :mod:`adaptbench.packing`): ``ends`` gives (row, column) of each sequence's end.
        """
        hidden = self.backbone(input_ids=ids, attention_mask=kwargs.pop("attention_mask", mask), **kwargs)
        if ends is None:
            return hidden.last_hidden_state[torch.arange(ids.shape[0], device=ids.device), mask.sum(dim=1) - 1]
        return hidden.last_hidden_state[ends[:, 0], ends[:, 1]]

    @property
    def head_weight(self) -> torch.Tensor:
        """(vocab, hidden): the output layer's (base) weight."""
        return getattr(self.head, "base_layer", self.head).weight

    @property
    def plain_head(self) -> bool:
        """A bare linear layer: its rows can be read directly (no adapter on it)."""
        return isinstance(self.head, torch.nn.Linear) and not hasattr(self.head, "base_layer")

    @property
    def vocab_size(self) -> int:
        return self.head_weight.shape[0]

    @property
    def device(self) -> torch.device:
        return self.head_weight.device


def logit_transform(config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What the model's own forward does to its logits after the LM head, element-wise: final-logit
    softcapping (Gemma 2/3), ``logit_scale`` (Cohere), ``logits_scaling`` (Granite), T5's scaling of the
    decoder states (the head is linear without a bias, so scaling its input scales its logits).  Skipping it would
    score other logits than the model computes."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap:
        return lambda z: torch.tanh(z / cap) * cap
    scale = getattr(cfg, "logit_scale", None)
    if scale is not None and getattr(cfg, "model_type", "") in ("cohere", "cohere2"):
        return lambda z: z * scale
    scaling = getattr(cfg, "logits_scaling", None)
    if scaling:
        return lambda z: z / scaling
    if getattr(cfg, "scale_decoder_outputs", False):  # T5: decoder states * d_model^-0.5 before a bias-free head
        factor = cfg.d_model ** -0.5
        return lambda z: z * factor
    return None


def _finish(parts: LMParts, logits: torch.Tensor, token_ids: torch.Tensor | None = None) -> torch.Tensor:
    """What the model's forward does after its head: the logit bias (of ``token_ids``, or all), then the
    element-wise transform; in float32."""
    logits = logits.float()
    if parts.logit_bias is not None:
        bias = parts.logit_bias if token_ids is None else parts.logit_bias[token_ids]
        logits = logits + bias.float()
    return parts.transform(logits) if parts.transform is not None else logits


def verbalizer_logits(parts: LMParts, hidden: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Logits of ``token_ids`` from hidden states (..., hidden): a (..., n_tokens) float32 tensor.

    A plain LM head: only the rows of those tokens are multiplied (in float32; they are few).  An
    adapted head (LoRA on ``lm_head``) runs as the model runs it, then the columns are picked.
    """
    if not parts.plain_head:
        return _finish(parts, parts.head(hidden)[..., token_ids], token_ids)
    rows = parts.head.weight[token_ids].float()
    logits = hidden.float() @ rows.T
    if parts.head.bias is not None:
        logits = logits + parts.head.bias[token_ids].float()
    return _finish(parts, logits, token_ids)


def vocab_logits(parts: LMParts, hidden: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits from hidden states (..., hidden) through the model's own head, as float32
    (only the output row is upcast, never a copy of the head's weight)."""
    return _finish(parts, parts.head(hidden))
