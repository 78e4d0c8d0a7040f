"""Self-study inputs (Eyuboglu et al., 2025, "Cartridges"): the model writes the distillation inputs itself.

For each sample, a chunk of the context (a seeded size from ``chunk_tokens`` at a seeded offset) is shown
to the model with a seed prompt of one of several kinds -- a question, a summary request, a use case, a
question about structure, a creative request, as the paper's seed prompts -- and the model writes one
request about it (sampled, seeded, its first line).  The requests become user turns that the teacher,
reading the whole context, answers (``cd.generate``: on by default for self-study), and the student
distils request + answer.  Training and held-out requests are separate samples (their own seeds), so task
scores and KLs are always on requests the student never saw.  The requests are saved with the run
(``self_study.jsonl``) and their generation is a cost phase of its own (``self_study``), part of what
distilling costs once.
"""

from __future__ import annotations

import json
import os

import numpy as np
from pydantic import Field, PositiveFloat, PositiveInt, field_validator

from ...config.settings import Strict
from ...errors import ConfigError
from .generate import continuations

#: What the model is asked to write about a chunk, per kind (the instruction follows the chunk).
SEED_PROMPTS = {
    "question": "Write one question that a reader could ask about the text above and that the text answers.",
    "summary": "Write one request asking for a summary of a part of the text above.",
    "use_case": "Write one request that a user with a real task could make using the information in the text above.",
    "structure": "Write one question about how the text above is organised or about a detail of its structure.",
    "creative": "Write one creative request (a poem, a story, an analogy) inspired by the text above.",
}
HELD_OUT_SEED = 1_000_003  # the held-out samples' seeds start here: never the training ones


class SelfStudySettings(Strict):
    """``cd.inputs: self_study``: how the model writes its own inputs about the context."""

    n: PositiveInt = Field(64, description="requests to distil on (held-out ones come on top: cd.held_out)")
    chunk_tokens: list[PositiveInt] = Field([256, 512], min_length=1, description="chunk sizes drawn from (each "
                                            "at most the context's length)")
    kinds: list[str] = Field(list(SEED_PROMPTS), min_length=1, description=f"seed prompt kinds: {', '.join(SEED_PROMPTS)}")
    max_request_tokens: PositiveInt = Field(48, description="tokens of a request at most (its first line is kept)")
    temperature: PositiveFloat = Field(1.0, description="sampling temperature of the requests")
    seed: int = Field(0, description="draws chunks, kinds and the requests' samples")

    @field_validator("kinds")
    @classmethod
    def _known(cls, kinds: list[str]) -> list[str]:
        unknown = [k for k in kinds if k not in SEED_PROMPTS]
        if unknown:
            raise ValueError(f"unknown self-study kind {unknown[0]!r} (known: {', '.join(SEED_PROMPTS)})")
        return kinds


def held_out_count(held_out, n: int) -> int:
    """Held-out requests: ``cd.held_out`` as a count, or as a share of all (training + held-out) requests."""
    if isinstance(held_out, float):
        return max(1, round(held_out * n / (1 - held_out)))
    return held_out


def _prompt(tokenizer, chunk: str, kind: str) -> str:
    """The chunk and the seed prompt, as a user turn where the tokenizer has a chat template."""
    ask = f"{chunk}\n\n{SEED_PROMPTS[kind]} Write only the request, on one line."
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": ask}], tokenize=False,
                                             add_generation_prompt=True)
    return f"{ask}\nRequest:"


def plan(settings: SelfStudySettings, context_ids: list[int], count: int, seed: int) -> list[tuple[int, int, str]]:
    """(chunk start, chunk length, kind) of ``count`` samples, seeded."""
    if min(settings.chunk_tokens) > len(context_ids):
        raise ConfigError(f"cd.self_study.chunk_tokens: the smallest chunk ({min(settings.chunk_tokens)} tokens) is "
                          f"longer than the context ({len(context_ids)} tokens); use smaller chunks")
    rng = np.random.default_rng(seed)
    sizes = [s for s in settings.chunk_tokens if s <= len(context_ids)]
    out = []
    for _ in range(count):
        size = int(rng.choice(sizes))
        out.append((int(rng.integers(0, len(context_ids) - size + 1)), size, str(rng.choice(settings.kinds))))
    return out


def write_requests(model, tokenizer, context_ids: list[int], settings: SelfStudySettings, count: int,
                   seed: int, window: int) -> list[dict]:
    """``count`` requests ``{"text", "kind", "chunk": [start, length]}``, each the first non-empty line the
    model wrote (samples that wrote none are left out)."""
    samples = plan(settings, context_ids, count, seed)
    prompts = [tokenizer(_prompt(tokenizer, tokenizer.decode(context_ids[a:a + n], skip_special_tokens=True), kind),
                         add_special_tokens=False)["input_ids"] for a, n, kind in samples]
    room = [min(settings.max_request_tokens, window - len(p)) for p in prompts]
    written = continuations(model, tokenizer, [], prompts, None, 1, room, settings.temperature, seed)
    out = []
    for (a, n, kind), ids in zip(samples, written):
        text = next((line.strip() for line in tokenizer.decode(ids, skip_special_tokens=True).split("\n")
                     if line.strip()), "")
        if text:
            out.append({"text": text, "kind": kind, "chunk": [a, n]})
    return out


def save(out_dir: str | None, train: list[dict], held: list[dict]) -> str | None:
    """The requests, one JSON line each with ``split`` (train or held_out), in the run folder."""
    if not out_dir:
        return None
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "self_study.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        for split, rows in (("train", train), ("held_out", held)):
            f.writelines(json.dumps({**r, "split": split}) + "\n" for r in rows)
    return path
