"""Sequence-level context distillation: the teacher's next-token distribution at every token of an input.

Askell et al. (2021) and Snell et al. (2022) distil a context C into the weights by minimising
``KL(P(. | C, x<=j) || P_theta(. | x<=j))`` at every position j of a set of inputs X, not at one answer
position.  The teacher reads the text C + X tokenised as one string -- what a model reads when a user
puts the context in the prompt (a context ending in a blank line is read as two newline tokens before
code, not as the one token it is at the end of a string: ``PromptEncoder.read_after``); the student
reads X's own tokens of that reading (after the tokenizer's start token), so position j of the student
lines up with position j of the teacher.  The predictions compared are those of every input token and
of the token after the input; with a start token (BOS) the student's first prediction is made at BOS,
the teacher's at the token before the input's first.

The teacher's distributions are computed once, with the context's KV cache (exactly as ICL scores),
and kept as compact top-k targets (:mod:`adaptbench.distill_targets`); the teacher is then freed.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..._util.files import owned_temp
from .targets import CompactTargets, compact_kl, compress_topk, full_kl
from ...models.parts import LMParts, verbalizer_logits, vocab_logits
from ...models.interface import lm_parts
from ...scoring.core import PrefixCache, sequence_hidden

CHUNK = 512  # positions per vocabulary-wide logits block (memory: CHUNK x vocab floats)


def predicted_hidden(parts: LMParts, prefix_ids: Sequence[int], suffixes: Sequence[Sequence[int]],
                     firsts: Sequence[int], pad_id: int, cache: PrefixCache | None, batch_size: int = 4,
                     on_batch: Callable[[int], None] | None = None) -> list[torch.Tensor]:
    """The teacher's final hidden states at the positions whose predictions are distilled: for reading i
    (``prefix_ids + suffixes[i]``), every row from position ``len(prefix_ids) + firsts[i]`` to its end
    (``firsts[i] == -1``: from the prefix's last position, whose state the cache keeps as ``last_hidden``).
    ``cache`` (the prefix's) runs only the suffixes; without it each reading runs whole (the reference path
    the cache is tested against)."""
    out: list[torch.Tensor] = [torch.empty(0)] * len(suffixes)
    n_prefix = len(prefix_ids)
    order = sorted(range(len(suffixes)), key=lambda i: -len(suffixes[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            if cache is not None:
                hidden = sequence_hidden(parts, [suffixes[i] for i in batch], pad_id, cache)
                rows = [torch.cat([cache.last_hidden[None], h]) if firsts[i] < 0 else h[firsts[i]:]
                        for i, h in zip(batch, hidden)]
            else:
                full = sequence_hidden(parts, [list(prefix_ids) + list(suffixes[i]) for i in batch], pad_id)
                rows = [h[n_prefix + firsts[i]:] for i, h in zip(batch, full)]
            for i, h in zip(batch, rows):
                out[i] = h.float().cpu()
            if on_batch is not None:
                on_batch(len(batch))
    return out


def read_ids(prefix: Sequence[int], readings: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
    """The token ids a teacher read, for its targets file, so anyone can check them: ``context_ids`` (the
    shared prefix), ``seam_ids`` / ``seam_lengths`` (per input, the tokens read between the prefix and the
    input's own tokens) and ``input_ids`` / ``input_lengths`` (each input's own tokens, a sampled
    continuation included: what the student reads after its start tokens), concatenated in target order."""
    def flat(lists):
        return torch.tensor([t for ids in lists for t in ids], dtype=torch.int64)

    seams, owns = [r[0] for r in readings], [r[1] for r in readings]
    return {"context_ids": torch.tensor(list(prefix), dtype=torch.int64), "seam_ids": flat(seams),
            "seam_lengths": torch.tensor([len(x) for x in seams], dtype=torch.int64), "input_ids": flat(owns),
            "input_lengths": torch.tensor([len(x) for x in owns], dtype=torch.int64)}


def distributions(parts: LMParts, hidden: torch.Tensor, temperature: float) -> torch.Tensor:
    """log-softmax(logits / T) over the vocabulary at each row of ``hidden`` (n, vocab), in float32."""
    with torch.inference_mode():
        return torch.log_softmax(vocab_logits(parts, hidden.to(parts.device)) / temperature, dim=-1).cpu()


def frozen_head(parts: LMParts) -> LMParts:
    """A copy of the output layer that training cannot change (the student may be the teacher's model)."""
    head = copy.deepcopy(parts.head).requires_grad_(False)
    return LMParts(None, head, parts.cache_kwarg, parts.transform)


@dataclass
class HiddenTargets:
    """``cd.store: hidden``: the teacher's final hidden state per position (float16) and a frozen copy of
    its output layer; the full next-token distribution is rebuilt whenever the loss needs it.

    Top-k targets lose how the teacher spreads the mass outside its top k (their KL is off by
    ``p_rest * KL(tails)``, ~0.1 nats/position on SmolLM2 text).  The hidden state holds the whole
    distribution in ``2 * hidden_size`` bytes (1,152 for SmolLM2, 0.59 % of its 49,152-token float32
    distribution); float16 rounding of it moves the KL by ~2.5e-4 nats/position.  Costs: the output layer
    kept beside the student (its vocabulary x hidden weights) and one extra vocabulary-wide product per
    position in training."""

    hidden: torch.Tensor  # (n, hidden) float16 on CPU
    head: LMParts
    temperature: float

    @property
    def n_positions(self) -> int:
        return self.hidden.shape[0]

    @property
    def vocab_size(self) -> int:
        return self.head.vocab_size

    @property
    def bytes_per_position(self) -> int:
        return self.hidden.shape[1] * self.hidden.element_size()

    def rows(self, start: int, stop: int) -> HiddenTargets:
        return HiddenTargets(self.hidden[start:stop], self.head, self.temperature)

    def kl(self, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
        """Per-position KL(teacher || student) over the whole vocabulary."""
        with torch.no_grad():
            teacher = torch.log_softmax(vocab_logits(self.head, self.hidden.to(self.head.device).float()) / temperature,
                                        dim=-1)
        return full_kl(teacher, student_logits, temperature)

    def save(self, path: str, metadata: dict | None = None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """``tensors``: more tensors to store beside the targets (the token ids the teacher read)."""
        from safetensors.torch import save_file

        tmp = owned_temp(path)
        save_file({"hidden": self.hidden.contiguous(), **(tensors or {})}, tmp,
                  metadata={k: str(v) for k, v in (metadata or {}).items()})
        os.replace(tmp, path)


def _kl(target, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    if isinstance(target, HiddenTargets):
        return target.kl(student_logits, temperature)
    return compact_kl(student_logits, target, temperature)


def teacher_targets(parts: LMParts, hidden: list[torch.Tensor], temperature: float, store: str,
                    top_k: int) -> CompactTargets | HiddenTargets:
    """Every input's positions as one block of targets (inputs one after the other), as ``cd.store`` says."""
    if store == "hidden":
        return HiddenTargets(torch.cat(hidden).half(), frozen_head(parts), temperature)
    return compact_targets(parts, hidden, temperature, top_k)


def compact_targets(parts: LMParts, hidden: list[torch.Tensor], temperature: float, top_k: int) -> CompactTargets:
    """Every input's positions as one block of top-k targets (inputs one after the other)."""
    blocks = []
    for h in hidden:
        for start in range(0, len(h), CHUNK):
            blocks.append(compress_topk(distributions(parts, h[start:start + CHUNK], temperature), top_k))
    return CompactTargets.cat(blocks)


class SequenceStudent(nn.Module):
    """The student: in training, the final hidden states at every real token of every example, flat
    ``(n_tokens, hidden)`` in example order (the loss turns them into logits a block at a time, so no
    logits tensor for every position of the batch exists at once); in evaluation, verbalizer logits at
    the last token, as PBFT predicts (so classification eval sets score as usual)."""

    def __init__(self, lm: nn.Module, token_ids: list[int]):
        super().__init__()
        self.lm = lm
        self.head = None
        self.register_buffer("token_ids", torch.tensor(token_ids, dtype=torch.long), persistent=False)

    def forward(self, input_ids, attention_mask, position_ids=None, ends=None) -> torch.Tensor:
        parts = lm_parts(self.lm)
        hidden = parts.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                use_cache=False).last_hidden_state
        if ends is None:  # right-padded rows, one example each
            lengths = attention_mask.sum(dim=1)
            ends = torch.stack([torch.arange(len(lengths), device=lengths.device), lengths - 1], dim=1)
        else:  # packed rows: positions restart at 0 in every example
            lengths = position_ids[ends[:, 0], ends[:, 1]] + 1
        if not self.training:
            last = hidden[ends[:, 0], ends[:, 1]]
            return verbalizer_logits(parts, last, self.token_ids) if len(self.token_ids) else last
        return torch.cat([hidden[r, c - n + 1:c + 1] for (r, c), n in zip(ends.tolist(), lengths.tolist())])


def sequence_loss(parts: LMParts, hidden: torch.Tensor, lengths: list[int], targets: list,
                  temperature: float) -> torch.Tensor:
    """Mean over all distilled positions of ``T^2 * KL(teacher_T || student_T)``.

    ``hidden``: the student's flat hidden states (examples one after the other, ``lengths`` rows each);
    an example's last ``targets[i].n_positions`` rows are its distilled positions."""
    total, count, row = hidden.new_zeros(()), 0, 0
    for n, target in zip(lengths, targets):
        block = hidden[row + n - target.n_positions: row + n]
        for start in range(0, len(block), CHUNK):
            part = target.rows(start, start + CHUNK)
            total = total + _kl(part, vocab_logits(parts, block[start:start + CHUNK]), temperature).sum()
        count += target.n_positions
        row += n
    return temperature ** 2 * total / max(count, 1)


def answer_logits(parts: LMParts, hidden: torch.Tensor, lengths: list[int], token_ids: torch.Tensor) -> torch.Tensor:
    """Verbalizer logits at each example's last token, from the flat hidden states (for a label loss)."""
    ends = torch.tensor(lengths, device=hidden.device).cumsum(0) - 1
    return verbalizer_logits(parts, hidden[ends], token_ids)
