"""Packed training batches: several examples per row, no padding to the batch's longest example.

A random training batch of NLI examples (40 to 200 tokens) padded to its longest example is about
half padding, and padding costs the same activations and FLOPs as text.  Packing puts the examples
into rows as long as the batch's longest example (first-fit decreasing), restarts position ids at
every example, and gives the model a block-diagonal causal mask, so each example attends only to
itself: the hidden states are those of the examples run alone (checked exactly in the tests, and
once per model at run time), while the attention cost per row stays that of one padded row.
Causal LMs only: an encoder-decoder's batches are padded (its capabilities say why).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.capabilities import local_capabilities
from ..models.cartridge import is_cartridge


def pack(seqs: Sequence[Sequence[int]], pad_id: int, mask_dtype: torch.dtype | None = None) -> dict:
    """Model inputs for packed rows: input_ids, position_ids, a 4D attention mask and ``ends`` (row, col)
    of each sequence's last token, in the order of ``seqs``.  ``mask_dtype`` None gives a boolean mask
    (True = attend, for SDPA); a float dtype gives an additive mask (0 / min, for eager attention)."""
    width = max(len(s) for s in seqs)
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: (-len(seqs[i]), i)):
        for r, used in enumerate(fill):
            if used + len(seqs[i]) <= width:
                rows[r].append(i)
                fill[r] += len(seqs[i])
                break
        else:
            rows.append([i])
            fill.append(len(seqs[i]))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment = torch.full((len(rows), width), -1, dtype=torch.long)
    ends = torch.zeros((len(seqs), 2), dtype=torch.long)
    for r, members in enumerate(rows):
        col = 0
        for j, i in enumerate(members):
            n = len(seqs[i])
            ids[r, col:col + n] = torch.as_tensor(seqs[i])
            positions[r, col:col + n] = torch.arange(n)
            segment[r, col:col + n] = j
            ends[i] = torch.tensor([r, col + n - 1])
            col += n
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    allowed |= torch.eye(width, dtype=torch.bool)  # row padding attends to itself: no all-masked softmax row
    mask = allowed[:, None]
    if mask_dtype is not None:
        mask = torch.zeros(mask.shape, dtype=mask_dtype).masked_fill(~mask, torch.finfo(mask_dtype).min)
    return {"input_ids": ids, "attention_mask": mask, "position_ids": positions, "ends": ends,
            "n_tokens": sum(len(s) for s in seqs)}


def mask_dtype_for(model: torch.nn.Module) -> torch.dtype | None:
    """Boolean masks for SDPA/flex attention, additive masks in the model's dtype for eager."""
    impl = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    if impl == "eager":
        return next(model.parameters()).dtype
    return None


def packing_unsupported(lm: torch.nn.Module) -> str | None:
    """Why this model's training batches cannot be packed, or None.  Packing works for every causal
    architecture that takes 4D masks and position ids (flash-attention-2 takes no 4D mask), as its
    capabilities say -- and, checked here once, gives packed rows the hidden states of padded ones."""
    if is_cartridge(lm):
        return "a cartridge student reads after its KV prefix; its batches are padded (packed 4D masks are not widened)"
    why_not = local_capabilities(lm.config).packing
    if why_not:
        return why_not
    if not _packed_equals_padded(lm):
        return "packed rows did not give the hidden states of padded rows on this model"
    return None


def packing_works(lm: torch.nn.Module) -> bool:
    """Whether this model gives packed rows the same hidden states as padded ones."""
    return packing_unsupported(lm) is None


def _packed_equals_padded(lm: torch.nn.Module) -> bool:
    """Checked once per model: the last hidden states of a few sequences, packed and padded."""
    from ..scoring.core import last_hidden, pad_right
    from ..models.interface import lm_parts

    parts = lm_parts(lm)
    vocab = parts.vocab_size
    seqs = [[(7 * k + 3) % vocab for k in range(n)] for n in (5, 2, 3)]
    device = parts.device
    try:
        with torch.no_grad():
            ids, mask = pad_right(seqs, 0)
            ref = last_hidden(parts, ids.to(device), mask.to(device), use_cache=False)
            p = pack(seqs, 0, mask_dtype_for(lm))
            got = last_hidden(parts, p["input_ids"].to(device), p["attention_mask"].to(device),
                              ends=p["ends"].to(device), position_ids=p["position_ids"].to(device), use_cache=False)
    except (RuntimeError, ValueError, TypeError):
        return False
    tol = 1e-4 if ref.dtype == torch.float32 else 3e-2
    return bool(torch.allclose(got.float(), ref.float(), atol=tol, rtol=tol))
