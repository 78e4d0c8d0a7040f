"""How much of a context's effect a distilled student recovered, on inputs it never trained on.

Per held-out input, at every distilled position: ``KL(teacher with C || student)`` and
``KL(teacher with C || base model without C)`` (the base is the student's model before training), both
exact over the whole vocabulary; the share of the context's effect recovered, ``1 - KL_student /
KL_base``; and how often the student's most likely next token is the teacher's.  The teacher's hidden
states and a frozen copy of its output layer are kept for this (its hidden size per position, not its
vocabulary), so the teacher model itself is freed before the student trains.  A few greedy
generations (base without C, teacher with C, student) go into the record side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...scoring import LMParts, sequence_hidden, vocab_logits
from .sequence import CHUNK


@dataclass
class HeldOut:
    texts: list[str]
    student_ids: list[list[int]]  # start tokens + input tokens, what the student reads
    teacher_hidden: list[torch.Tensor]  # per input: (distilled positions, hidden), float32 on CPU
    teacher_head: LMParts  # a frozen copy of the teacher's output layer (no backbone)
    base: dict = field(default_factory=dict)  # KL and top-1 agreement of the model without the context
    generations: list[dict] = field(default_factory=list)


def _student_hidden(parts: LMParts, ids: list[list[int]], n_pred: list[int], pad_id: int) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [h[len(h) - n:] for h, n in zip(sequence_hidden(parts, ids, pad_id), n_pred)]


def compare(teacher: HeldOut, parts: LMParts, pad_id: int) -> dict:
    """Mean per-position KL(teacher || model) and top-1 agreement of ``parts`` (no context) with the teacher."""
    n_pred = [len(h) for h in teacher.teacher_hidden]
    kl_sum, agree, n = 0.0, 0, 0
    for t_h, s_h in zip(teacher.teacher_hidden, _student_hidden(parts, teacher.student_ids, n_pred, pad_id)):
        for start in range(0, len(t_h), CHUNK):
            with torch.inference_mode():
                t = torch.log_softmax(vocab_logits(teacher.teacher_head, t_h[start:start + CHUNK].to(
                    teacher.teacher_head.device)), dim=-1)
                s = torch.log_softmax(vocab_logits(parts, s_h[start:start + CHUNK]), dim=-1).to(t.device)
            kl_sum += float((t.exp() * (t - s)).sum())
            agree += int((t.argmax(-1) == s.argmax(-1)).sum())
            n += len(t)
    return {"kl": kl_sum / max(n, 1), "top1_agreement": agree / max(n, 1), "positions": n}


def recovered(base: dict, student: dict) -> dict:
    """The record's summary: both KLs, the share of the context's effect recovered, agreements."""
    share = 1 - student["kl"] / base["kl"] if base["kl"] > 0 else None
    return {"kl_student": student["kl"], "kl_base": base["kl"], "recovered": share,
            "top1_agreement_student": student["top1_agreement"], "top1_agreement_base": base["top1_agreement"],
            "positions": student["positions"]}


def greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy continuation of ``ids`` by a causal LM (or a peft wrapper), decoded."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(
            1, len(ids), dtype=torch.long, device=device), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
