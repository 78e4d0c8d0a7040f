"""Compact teacher targets for long-context distillation: the top-k of each next-token distribution.

Long-context distillation (Askell et al., 2021; Snell et al., 2022) matches the teacher's next-token
distribution at *every* token position of the inputs.  Storing the full distribution costs
``4 * vocab`` bytes per position (196,608 bytes for SmolLM2's 49,152 tokens), so the teacher's pass
over a few thousand inputs would fill gigabytes.  Almost all of a language model's probability mass
sits on a few dozen tokens, so we keep, per position, the top-k token ids and their log-probabilities
plus one *rest* bucket holding the remaining mass:

    teacher  p = (p_1 .. p_k, p_rest),   p_rest = 1 - sum_i p_i
    student  q = (q_1 .. q_k, q_rest),   q_i = student's probability of the teacher's i-th token

and train on ``KL(p || q)`` over these k + 1 buckets (:func:`compact_kl`).  Collapsing both
distributions onto the same buckets can only lose information, so by the data-processing inequality
the bucketed KL is a lower bound of the full KL; with ``k = vocab`` (empty rest bucket) it is exact.
By the chain rule of KL the gap is exactly ``p_rest * KL(teacher's tail || student's tail)`` (both
tails renormalised): what the bucketing cannot see is how the two spread the rest mass over the
other tokens.  The *gradient* w.r.t. the student's logits is exact on the k kept tokens (``q_i - p_i``,
as with the full KL); on a tail token j it is ``q_j * (1 - p_rest / q_rest)``: the tail is moved as
a whole to the teacher's rest mass, keeping the student's own shape inside it.
:func:`topk_error` measures the gap for a benchmark.

Measured with SmolLM2-135M (Q4_1 GGUF, float32 on CPU), teacher = the model reading a 1.3-1.8k-token
context, student = the same model without it (the student before training), ~1,100 positions of MNLI
premises or README prose, T = 1: mean rest mass at k = 128 is 0.17, and mean |compact - full KL| is
0.086-0.113 nats/position (full KL 0.32-0.70); 0.022-0.028 for a student half way to the teacher
(logits averaged).  k = 256 only brings it to 0.064-0.085, and at T = 2 the rest bucket holds ~80% of
the mass.  So on a small model's real text the top-k value of the KL is *not* within 1e-3 nats of the
full KL; only on peaked distributions (rest mass ~0.5% or less) is it.  Storing the teacher's final
hidden state in float16 instead (1,152 bytes/position for SmolLM2's 576 dimensions, and the teacher's
LM head kept for training: ``scoring.vocab_logits``) gave a mean error of 2.5e-4 nats on the same text.

Temperature: the caller passes the teacher's log-softmax of ``logits / T``; :func:`compact_kl`
divides the student's logits by ``T`` itself.  The loss of issue 11 is ``T^2 * mean(compact_kl)``
(:func:`distill_loss`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from ..._util.files import owned_temp
from ...errors import ConfigError, DataError

#: Tokens kept per position.  128 ids (int32) + 128 log-probs (float32) + the rest bucket (float32) =
#: 1,028 bytes per position: 0.52% of the 196,608 bytes of a full float32 distribution over SmolLM2's
#: 49,152 tokens (a 191x saving), with the rest bucket keeping the mass of the other 49,024 tokens.
#: The largest power of two under 1% (k = 256 takes 2,052 bytes, 1.04%).
DEFAULT_TOP_K = 128

_TENSORS = ("ids", "logprobs", "rest")


@dataclass
class CompactTargets:
    """Per-position top-k teacher targets: ``ids`` (n, k) int32, ``logprobs`` (n, k) float32, ``rest`` (n,).

    ``logprobs`` are float32, not float16: float32 costs 2 bytes more per kept token (1,028 instead of
    772 bytes per position at k = 128, both under 1% of the full distribution), and in exchange the
    stored targets add no rounding error of their own.  Float16 rounds a log-prob of -10 to steps of
    0.008 nats; on SmolLM2 text it moved the KL by 1.7e-4 nats/position on average (3e-3 at worst),
    a sixth of a 1e-3 budget spent on storage alone.  All error left is the top-k bucketing.

    ``rest`` is ``log(1 - sum(exp(logprobs)))`` (``-inf`` when the top-k holds all the mass).
    ``requested_k`` is the k asked for, ``k`` the one kept: they differ when the vocabulary is smaller
    than the request (see :attr:`clamped`).
    """

    ids: torch.Tensor
    logprobs: torch.Tensor
    rest: torch.Tensor
    vocab_size: int
    requested_k: int
    metadata: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.ids.shape[1]

    @property
    def n_positions(self) -> int:
        return self.ids.shape[0]

    @property
    def clamped(self) -> bool:
        """True when the vocabulary was smaller than the requested k (so the caller can record it)."""
        return self.requested_k > self.k

    @property
    def bytes_per_position(self) -> int:
        """Storage per position: k ids, k log-probs and the rest bucket (what the saving is measured on)."""
        return (self.k * (self.ids.element_size() + self.logprobs.element_size())
                + self.rest.element_size())

    def rows(self, start: int, stop: int) -> CompactTargets:
        """Positions ``start:stop`` (one input's block of a concatenation)."""
        return CompactTargets(self.ids[start:stop], self.logprobs[start:stop], self.rest[start:stop],
                              self.vocab_size, self.requested_k, self.metadata)

    @classmethod
    def cat(cls, parts: list[CompactTargets]) -> CompactTargets:
        """The positions of several target blocks, one after the other."""
        first = parts[0]
        return cls(torch.cat([p.ids for p in parts]), torch.cat([p.logprobs for p in parts]),
                   torch.cat([p.rest for p in parts]), first.vocab_size, first.requested_k, first.metadata)

    def save(self, path: str, metadata: dict | None = None, tensors: dict[str, torch.Tensor] | None = None) -> None:
        """Write the targets to a safetensors file, atomically (a killed run leaves no half file).

        ``metadata`` (JSON-serialisable values) is merged into :attr:`metadata` and stored with the
        vocabulary size and requested k, so the file says what it holds; ``tensors``: more tensors to
        store beside the targets (the token ids the teacher read)."""
        meta = {**self.metadata, **(metadata or {})}
        header = {"vocab_size": str(self.vocab_size), "requested_k": str(self.requested_k),
                  "metadata": json.dumps(meta, sort_keys=True)}
        from safetensors.torch import save_file

        stored = {name: getattr(self, name).contiguous().cpu() for name in _TENSORS}
        tmp = owned_temp(path)
        save_file({**stored, **(tensors or {})}, tmp, metadata=header)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "CompactTargets":
        """Read targets written by :meth:`save`; a missing or foreign file is a DataError naming it."""
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as f:
                header = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in _TENSORS if name in f.keys()}
        except (OSError, SafetensorError) as e:
            raise DataError(f"{path}: cannot read compact teacher targets: {e}") from None
        missing = [n for n in _TENSORS if n not in tensors] + [n for n in ("vocab_size", "requested_k")
                                                               if n not in header]
        if missing:
            raise DataError(f"{path}: not a compact-targets file (missing {', '.join(missing)})")
        return cls(tensors["ids"], tensors["logprobs"], tensors["rest"], int(header["vocab_size"]),
                   int(header["requested_k"]), json.loads(header.get("metadata", "{}")))


def full_bytes_per_position(vocab: int) -> int:
    """Bytes of one full float32 next-token distribution (the storage the compact form replaces)."""
    return 4 * vocab


def _rest_logsumexp(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logsumexp over each row's entries *not* in ``ids``: the rest bucket, without cancellation.

    ``log(1 - sum(top-k probs))`` loses every digit when the top-k holds nearly all the mass
    (1 - 0.9999999 in float32); summing the left-out entries directly in log space does not.  The
    kept entries are masked with the dtype's lowest finite value rather than -inf, so a row whose
    entries are all kept gives a huge negative number (read as "no mass") and finite gradients."""
    masked = values.scatter(1, ids.long(), torch.finfo(values.dtype).min)
    return torch.logsumexp(masked, dim=-1)


def compress_topk(logprobs: torch.Tensor, k: int = DEFAULT_TOP_K) -> CompactTargets:
    """Keep each position's k most likely tokens and one bucket for the rest of the mass.

    ``logprobs``: (n_positions, vocab) log-softmax of the teacher's logits, already divided by the
    temperature.  k larger than the vocabulary is clamped to it (``result.clamped`` says so)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"cd.top_k must be a positive integer, got {k!r}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (n_positions, vocab), got shape {tuple(logprobs.shape)}")
    lp = logprobs.detach().float()
    vocab = lp.shape[1]
    kept = min(k, vocab)
    top, ids = torch.topk(lp, kept, dim=-1)
    if kept == vocab:
        rest = torch.full((lp.shape[0],), float("-inf"))
    else:
        rest = _rest_logsumexp(lp, ids).clamp(max=0.0)  # log(mass) <= 0 even after rounding
    return CompactTargets(ids.to(torch.int32).cpu(), top.cpu(), rest.cpu(), vocab, k)


def _student_buckets(student_logits: torch.Tensor, targets: CompactTargets, temperature: float):
    """The student's log-probs of the teacher's top-k tokens and of the rest, at temperature T."""
    if student_logits.dim() != 2 or student_logits.shape[0] != targets.n_positions:
        raise ValueError(f"student_logits must be ({targets.n_positions}, vocab), "
                         f"got shape {tuple(student_logits.shape)}")
    if student_logits.shape[1] < targets.vocab_size:
        raise ValueError(f"the student's vocabulary ({student_logits.shape[1]} logits) is smaller than the "
                         f"teacher's ({targets.vocab_size}): the targets' token ids do not fit")
    s = student_logits.float() / temperature
    ids = targets.ids.to(s.device).long()
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    top = s.gather(1, ids) - lse
    rest = _rest_logsumexp(s, ids) - lse.squeeze(1)
    return top, rest


def compact_kl(student_logits: torch.Tensor, targets: CompactTargets, temperature: float = 1.0) -> torch.Tensor:
    """Per-position KL(teacher || student) over the k + 1 buckets, in nats: shape (n,), differentiable.

    The student's logits are divided by ``temperature`` here; the teacher's were by the caller.
    Buckets with no teacher mass contribute 0 (p log p -> 0), whatever the student puts there."""
    q_top, q_rest = _student_buckets(student_logits, targets, temperature)
    device = q_top.device
    p_top_log = targets.logprobs.to(device).float()
    p_rest_log = targets.rest.to(device).float()
    return (_kl_terms(p_top_log, q_top).sum(-1)
            + _kl_terms(p_rest_log.unsqueeze(1), q_rest.unsqueeze(1)).squeeze(1))


def _kl_terms(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``p * (log p - log q)`` with 0 where p = 0 (log p = -inf), without NaNs in values or gradients."""
    has_mass = torch.isfinite(p_log)
    p_log_safe = torch.where(has_mass, p_log, torch.zeros_like(p_log))
    return torch.where(has_mass, torch.exp(p_log_safe) * (p_log_safe - q_log), torch.zeros_like(q_log))


def distill_loss(student_logits: torch.Tensor, targets: CompactTargets, temperature: float = 1.0) -> torch.Tensor:
    """The training loss: mean over positions of ``T^2 * KL`` (T^2 keeps gradients T-independent)."""
    return temperature ** 2 * compact_kl(student_logits, targets, temperature).mean()


def full_kl(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference: per-position KL(teacher || softmax(student / T)) over the whole vocabulary, (n,)."""
    lq = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    return _kl_terms(teacher_logprobs.float().to(lq.device), lq).sum(-1)


@torch.no_grad()
def topk_error(teacher_logprobs: torch.Tensor, student_logits: torch.Tensor, k: int = DEFAULT_TOP_K,
               temperature: float = 1.0) -> float:
    """Mean over positions of |compact KL - full KL| in nats: what keeping only the top-k costs."""
    compact = compact_kl(student_logits, compress_topk(teacher_logprobs, k), temperature)
    full = full_kl(teacher_logprobs, student_logits, temperature)
    return (compact.to(full.device) - full).abs().mean().item()
