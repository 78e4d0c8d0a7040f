"""How much of a context's effect a distilled student recovered, on inputs it never trained on.

Two places are measured for each held-out input, each as ``KL(teacher with C || student)`` and
``KL(teacher with C || base model without C)`` (the base is the student's model before training), exact
over the whole vocabulary, with the share of the context's effect recovered, ``1 - KL_student /
KL_base``, and how often the student's most likely next token is the teacher's:

- the *input*: every input token and the token after it -- what is distilled by default;
- the *reply*: the teacher (with C) writes a reply to the input (greedy by default, or sampled, seeded;
  ``cd.replies``), and the three models read input + reply, teacher-forced; the KLs are taken at the
  positions that predict the reply's tokens.  A context that shapes how a model answers (a persona, a
  style, a sign-off) acts there, hardly at all on the user's words: a student can recover half of the
  input-position KL while keeping none of the persona, which the reply measure shows.

The teacher's hidden states and a frozen copy of its output layer are kept for this (its hidden size per
position, not its vocabulary), so the teacher model itself is freed before the student trains.  A few
greedy generations (base without C, teacher with C, student) go into the record side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ...models.cartridge import generate as cartridge_generate, is_cartridge
from ...models.interface import lm_parts
from ...models.parts import LMParts, vocab_logits
from ...scoring.core import sequence_hidden
from .generate import eos_ids, greedy_batch
from .sequence import CHUNK

BATCH = 8  # held-out readings per forward pass


@dataclass
class HeldOut:
    texts: list[str]  # each held-out input's own tokens, decoded (what the student reads)
    student_ids: list[list[int]]  # start tokens + the input's own tokens + the teacher's reply
    first_row: list[int]  # position in student_ids of the first measured row (the start token's, or the input's)
    n_input: list[int]  # rows of the input measure (every input token and the one after it)
    replies: list[list[int]]  # the teacher's reply to each input (token ids; empty without replies)
    teacher_hidden: list[torch.Tensor]  # per input: the measured rows, float32 on CPU
    teacher_head: LMParts  # a frozen copy of the teacher's output layer (no backbone)
    base: dict = field(default_factory=dict)  # the model without the context, per measure
    generations: list[dict] = field(default_factory=list)

    def rows(self, i: int) -> int:
        """Rows kept for input i: the input measure's, then those predicting the reply's later tokens."""
        return self.n_input[i] + max(len(self.replies[i]) - 1, 0)

    def spans(self, i: int) -> dict[str, tuple[int, int]]:
        """The rows of each measure: the input's, and the reply's (from the row after the input's last token,
        which predicts the reply's first token)."""
        n = self.n_input[i]
        out = {"input": (0, n)}
        if self.replies[i]:
            out["reply"] = (n - 1, n - 1 + len(self.replies[i]))
        return out


def _model_rows(held: HeldOut, parts: LMParts, pad_id: int) -> list[torch.Tensor]:
    """The model's final hidden states at the measured rows of each held-out reading (no context)."""
    hidden = []
    with torch.inference_mode():
        for start in range(0, len(held.student_ids), BATCH):
            hidden += sequence_hidden(parts, held.student_ids[start:start + BATCH], pad_id)
    return [h[a:a + held.rows(i)] for i, (h, a) in enumerate(zip(hidden, held.first_row))]


def compare(held: HeldOut, parts: LMParts, pad_id: int, rows: list[torch.Tensor] | None = None) -> dict[str, dict]:
    """Per measure (input, reply): mean per-position KL(teacher || model) and top-1 agreement of ``parts``
    (a model without the context, or ``rows``: its hidden states at the measured rows of another reading --
    an arm's, :mod:`.arms`) with the teacher."""
    sums: dict[str, list] = {}
    model_rows = rows if rows is not None else _model_rows(held, parts, pad_id)
    for i, (t_h, s_h) in enumerate(zip(held.teacher_hidden, model_rows)):
        kl_rows, agree_rows = [], []
        for start in range(0, len(t_h), CHUNK):
            with torch.inference_mode():
                t = torch.log_softmax(vocab_logits(held.teacher_head, t_h[start:start + CHUNK].to(
                    held.teacher_head.device)), dim=-1)
                s = torch.log_softmax(vocab_logits(parts, s_h[start:start + CHUNK]), dim=-1).to(t.device)
            kl_rows.append((t.exp() * (t - s)).sum(-1))
            agree_rows.append(t.argmax(-1) == s.argmax(-1))
        kl, agree = torch.cat(kl_rows), torch.cat(agree_rows)
        for name, (a, b) in held.spans(i).items():
            total = sums.setdefault(name, [0.0, 0, 0])
            total[0] += float(kl[a:b].sum())
            total[1] += int(agree[a:b].sum())
            total[2] += b - a
    return {name: {"kl": k / max(n, 1), "top1_agreement": a / max(n, 1), "positions": n}
            for name, (k, a, n) in sums.items()}


def _summary(base: dict, student: dict) -> dict:
    share = 1 - student["kl"] / base["kl"] if base["kl"] > 0 else None
    return {"kl_student": student["kl"], "kl_base": base["kl"], "recovered": share,
            "top1_agreement_student": student["top1_agreement"], "top1_agreement_base": base["top1_agreement"],
            "positions": student["positions"]}


def recovered(base: dict[str, dict], student: dict[str, dict], reply_about: dict | None = None) -> dict:
    """The record's summary: both KLs, the share of the context's effect recovered and the agreements at
    the input positions, and the same on the teacher's replies under ``reply`` (with how they were written)."""
    out = _summary(base["input"], student["input"])
    if "reply" in student:
        out["reply"] = {**_summary(base["reply"], student["reply"]), **(reply_about or {})}
    return out


def greedy_many(model, tokenizer, prompts: list[list[int]], limits: list[int]) -> list[str]:
    """:func:`greedy` of each prompt (0 tokens: ""), decoded; a causal LM's (a LoRA student's) in batches
    (:func:`.generate.greedy_batch`, ending at the model's end-of-sequence tokens as ``generate`` does)."""
    if is_cartridge(model):
        return [greedy(model, tokenizer, ids, n) if n > 0 else "" for ids, n in zip(prompts, limits)]
    replies = greedy_batch(lm_parts(model), None, prompts, limits, eos_ids(model, tokenizer))
    return [tokenizer.decode(r, skip_special_tokens=True) for r in replies]


def greedy(model, tokenizer, ids: list[int], max_new_tokens: int) -> str:
    """Greedy continuation of ``ids`` by a causal LM (or a peft wrapper, a cartridge), decoded."""
    if is_cartridge(model):
        return tokenizer.decode(cartridge_generate(model, tokenizer, ids, max_new_tokens, lm_parts(model).cache_kwarg),
                                skip_special_tokens=True)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(
            1, len(ids), dtype=torch.long, device=device), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
