"""Encoder-decoder models (T5, Flan-T5, BART) behind the interface that scoring and the methods use.

Where a causal LM answers at the last token of the prompt, an encoder-decoder answers at the decoder's
first position: the encoder reads the whole prompt text -- context, query and target prefix
(``" answer:"``), tokenised as one text and followed by the end-of-sequence token, as the tokenizer
encodes an input -- and the decoder reads only its start token; the verbalizer tokens are scored from
the decoder's state there.  That is how lm-evaluation-harness scores a seq2seq model (the context,
with its special tokens, goes to the encoder; the continuation is the decoder's labels, so its first
token is scored after the start token), and it keeps one prompt object for both model kinds.  (Feeding
the target prefix to the decoder instead would score the verbalizer after text the decoder never
starts with in pre-training.)

The prefix cache (:class:`adaptbench.scoring.PrefixCache`) does not apply: the encoder attends in both
directions, so the demonstrations' states depend on the query after them.  Packed training batches do
not either (:mod:`adaptbench.packing` builds causal masks); batches are padded per batch instead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..errors import ModelError
from .parts import LMParts


def is_encoder_decoder(model: nn.Module) -> bool:
    """Whether ``model`` (or the model under a peft wrapper) is an encoder-decoder."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


@dataclass
class Seq2SeqParts(LMParts):
    """An encoder-decoder's pieces: ``backbone`` is the whole model (encoder and decoder are run apart)."""

    start_id: int = 0  # the decoder's start token
    end_ids: tuple[int, ...] = ()  # appended to every encoder input (the tokenizer's end of sequence)
    encoder_decoder: ClassVar[bool] = True

    def encoder_input(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded prompt ids with the end-of-sequence token(s) after each row's last real token."""
        if not self.end_ids:
            return ids, mask
        n, rows = len(self.end_ids), torch.arange(len(ids), device=ids.device)
        lengths = mask.sum(dim=1)
        ids = torch.cat([ids, ids.new_full((len(ids), n), self.end_ids[0])], dim=1)
        mask = torch.cat([mask, mask.new_zeros((len(mask), n))], dim=1)
        for k, token in enumerate(self.end_ids):
            ids[rows, lengths + k] = token
            mask[rows, lengths + k] = 1
        return ids, mask

    def encoder_states(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's final states (n, width, hidden) of the prompts, and the mask they go with."""
        ids, mask = self.encoder_input(ids, mask)
        return self.backbone.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    def answer_states(self, ids: torch.Tensor, mask: torch.Tensor, ends: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """The decoder's final state at its first position (its input: the start token), (n, hidden)."""
        if ends is not None or position_ids is not None or mask.dim() != 2:
            raise ValueError("an encoder-decoder takes right-padded rows, not packed ones")
        states, mask = self.encoder_states(ids, mask)
        start = torch.full((len(ids), 1), self.start_id, dtype=torch.long, device=ids.device)
        out = self.backbone.get_decoder()(input_ids=start, encoder_hidden_states=states, encoder_attention_mask=mask,
                                          use_cache=False)
        return out.last_hidden_state[:, 0]

    def encoder_mean(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The mean of the encoder's states over each prompt's real tokens (padding excluded), (n, hidden)."""
        states, mask = self.encoder_states(ids, mask)
        weights = mask.unsqueeze(-1).to(states.dtype)
        return (states * weights).sum(dim=1) / weights.sum(dim=1)


def decoder_start(model: nn.Module) -> int:
    """The decoder's start token: T5 starts from its pad token, BART from its end-of-sequence token."""
    for config in (model.config, getattr(model, "generation_config", None)):
        start = getattr(config, "decoder_start_token_id", None)
        if isinstance(start, int):
            return start
    raise ModelError(f"{type(model).__name__} has no decoder_start_token_id in its config or generation config: "
                     f"cannot tell where its decoder starts")


def end_of_input(config) -> tuple[int, ...]:
    """What the encoder reads after the text: the end-of-sequence token (T5's and BART's tokenizers append it)."""
    eos = config.eos_token_id
    if isinstance(eos, list):
        eos = eos[0] if eos else None
    return (eos,) if isinstance(eos, int) else ()


def seq2seq_parts(model: nn.Module, head: nn.Module, transform: Callable | None,
                  logit_bias: torch.Tensor | None) -> Seq2SeqParts:
    """The parts of a ``*ForConditionalGeneration`` (not a peft wrapper: pass its base model)."""
    return Seq2SeqParts(model, head, "cache", transform, logit_bias, start_id=decoder_start(model),
                        end_ids=end_of_input(model.config))
