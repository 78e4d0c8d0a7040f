"""The other ways to answer a query about a long context (``cd.arms``), measured on the run's own held-out
queries beside ICL and the distilled student: how much of the context's effect each keeps, what its
replies score, and what a query costs (:mod:`.query_costs`).

- ``truncate``: the context cut to its first or last N tokens, re-read with every query;
- ``rag``: the context in chunks of tokens, the top-k chunks for each query by BM25, in context order
  (:mod:`adaptbench.data.retrieval`), read with the query;
- ``kv_compressed``: the context's KV cache compressed once -- entries evicted by a query-agnostic press
  and/or kept in 2 or 4 bits (:mod:`adaptbench.scoring.kv_press`) -- and reused by every query.

Each arm reads a query the way the teacher does -- context and query as one text -- and its measured rows
are the same as the teacher's: the query's own tokens (the teacher's) and the teacher's reply.
"""

from __future__ import annotations

import os
from typing import Annotated, Literal, Union

import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt, model_validator

from ...config.settings import Strict
from ...data.retrieval import Bm25Chunks, EmbeddingChunks, chunk_spans
from ...errors import ConfigError
from ...scoring.core import PrefixCache, sequence_hidden
from ...scoring.kv_press import PRESSES, compress, quantize
from .generate import greedy_batch
from .query_costs import QueryPath, answer

NO_CONTEXT = "no_context"  # the model reading the query alone (the base model): the floor of every arm
BATCH = 8  # held-out readings an arm measures at once


class TruncateArm(Strict):
    """The naive baseline: keep part of the context."""

    kind: Literal["truncate"]
    name: str | None = Field(None, description="the arm's name in tables (default: its kind)")
    tokens: PositiveInt | PositiveFloat = Field(0.25, description="tokens of the context kept: a number, or a "
                                                "share of the context (0 < f < 1)")
    keep: Literal["first", "last"] = Field("last", description="the context's first or last tokens (the "
                                           "most recent turns of a conversation)")


class RagArm(Strict):
    """Retrieval: the chunks most like each query by BM25 (or by embeddings), in context order."""

    kind: Literal["rag"]
    name: str | None = Field(None, description="the arm's name in tables (default: its kind)")
    chunk_tokens: PositiveInt = Field(128, description="tokens per chunk (at most the model's window)")
    overlap: NonNegativeInt = Field(16, description="tokens a chunk shares with the one before")
    k: PositiveInt = Field(4, description="chunks put in the prompt for each query")
    separator: str = Field("\n\n", description="between chunks that do not touch in the context")
    embedding_model: str | None = Field(None, description="rank chunks by the cosine similarity of this "
                                        "sentence-transformers model's embeddings (a local folder or a hub id) "
                                        "instead of BM25; needs adaptbench[rag]")

    @model_validator(mode="after")
    def _overlap_within_a_chunk(self):
        if self.overlap >= self.chunk_tokens:
            raise ValueError(f"overlap ({self.overlap}) must be less than chunk_tokens ({self.chunk_tokens})")
        return self


class KvCompressedArm(Strict):
    """The context's KV cache made smaller once, then reused by every query."""

    kind: Literal["kv_compressed"]
    name: str | None = Field(None, description="the arm's name in tables (default: its kind)")
    compression_ratio: float | None = Field(0.5, gt=0.0, lt=1.0, description="share of the cached positions "
                                            "evicted in every layer and head (null: none)")
    press: Literal[PRESSES] = Field("knorm", description="knorm: keep the keys of lowest L2 norm (Devoto et al., "
                                    "2024); streaming: the first sink positions and the most recent (Xiao et "
                                    "al., 2024)")
    sink: NonNegativeInt = Field(4, description="streaming: first positions always kept")
    bits: Literal[2, 4] | None = Field(None, description="keep the (kept) keys and values as 2- or 4-bit integers "
                                       "(optimum-quanto, as transformers' QuantizedCache; pip install "
                                       "'adaptbench[kv]'); null: float")
    group_size: PositiveInt = Field(64, description="bits: values sharing one scale and shift")

    @model_validator(mode="after")
    def _compresses(self):
        if self.compression_ratio is None and self.bits is None:
            raise ValueError("set compression_ratio (evict), bits (quantize) or both: neither compresses the cache")
        return self


Arm = Annotated[Union[TruncateArm, RagArm, KvCompressedArm], Field(discriminator="kind")]


def arm_name(arm) -> str:
    return arm.name or arm.kind


class TextArm:
    """An arm that puts a (shorter) text in the prompt in place of the context: truncate or rag."""

    def __init__(self, settings, encoder, context: str, window: int):
        self.settings, self.name, self.enc, self.window = settings, arm_name(settings), encoder, window
        self.context, self.index = context, None
        if isinstance(settings, RagArm):
            if settings.chunk_tokens > window:
                raise ConfigError(f"cd.arms {self.name}: chunk_tokens {settings.chunk_tokens} is larger than the "
                                  f"model's window ({window} tokens)")
            spans = chunk_spans(encoder.tokenizer, context, settings.chunk_tokens, settings.overlap)
            self.index = (EmbeddingChunks(context, spans, settings.k, settings.separator, settings.embedding_model)
                          if settings.embedding_model else Bm25Chunks(context, spans, settings.k, settings.separator))
        else:
            self.kept = self._truncated(settings)

    def rebuilt(self) -> TextArm:
        """The arm built again from its settings (timing what setting it up costs)."""
        return TextArm(self.settings, self.enc, self.context, self.window)

    def _truncated(self, settings: TruncateArm) -> str:
        offsets = self.enc.tokenizer(self.context, add_special_tokens=False, return_offsets_mapping=True)[
            "offset_mapping"]
        n = len(offsets)
        keep = settings.tokens if isinstance(settings.tokens, int) else max(1, round(settings.tokens * n))
        if keep >= n:
            return self.context
        return self.context[:offsets[keep - 1][1]] if settings.keep == "first" else self.context[offsets[n - keep][0]:]

    def text_for(self, query: str) -> str:
        return self.index.context_for(query) if self.index is not None else self.kept

    def reading(self, query: str) -> tuple[list[int], int]:
        """The token ids the model reads for ``query`` (start tokens, the arm's context, the query) and where
        the query's own tokens begin."""
        reads = self.enc.read_after(self.text_for(query), [query])
        return reads.prefix + reads.suffixes[0], len(reads.prefix) + reads.starts[0]


class CacheArm:
    """kv_compressed: the context's cache but its last token, compressed; a query reads that last token
    first, so every measured row is computed against the compressed cache."""

    def __init__(self, settings: KvCompressedArm, prefix: list[int]):
        self.settings, self.name = settings, arm_name(settings)
        self.cached, self.lead = prefix[:-1], prefix[-1:]

    def build(self, parts) -> PrefixCache:
        s, cache = self.settings, PrefixCache.encode(parts, self.cached, shared=False)
        if s.compression_ratio is not None:
            cache = compress(cache, s.compression_ratio, s.press, s.sink)
        return cache if s.bits is None else quantize(cache, s.bits, s.group_size)


def local_embedding_model(arm, config_dir: str) -> str | None:
    """A rag arm's embedding model where it is a local folder -- beside the config first, else as given
    (from the working folder) -- or None (a hub id, no embedding model, another kind of arm).  What the run
    loads and what its identity hashes (:meth:`.method.ContextDistillation.files`)."""
    if not isinstance(arm, RagArm) or not arm.embedding_model:
        return None
    return next((path for path in (os.path.join(config_dir, arm.embedding_model), arm.embedding_model)
                 if os.path.isdir(path)), None)


def build_arms(settings: list, encoder, context: str, prefix: list[int], window: int, config_dir: str = ".") -> list:
    """The run's arms, ready to read queries (a kv_compressed arm needs a shared prefix of 2+ tokens; a rag
    arm's embedding model is a folder beside the config where there is one, else a folder or a hub id)."""
    out = []
    for arm in settings:
        local = local_embedding_model(arm, config_dir)
        if local:
            arm = arm.model_copy(update={"embedding_model": local})
        if isinstance(arm, KvCompressedArm):
            if len(prefix) < 2:
                raise ConfigError(f"cd.arms {arm_name(arm)}: the readings of the inputs share {len(prefix)} tokens "
                                  f"of the context; a compressed cache needs a shared prefix")
            out.append(CacheArm(arm, prefix))
        else:
            out.append(TextArm(arm, encoder, context, window))
    return out


def _before(arm, parts, texts: list[str], suffixes: list[list[int]], starts: list[int]):
    """Per held-out input, what the arm reads before the input's own tokens (after its cache, if it has one),
    and the cache (kv_compressed) or None."""
    if isinstance(arm, CacheArm):
        return [arm.lead + x[:b] for x, b in zip(suffixes, starts)], arm.build(parts)
    return [ids[:b] for ids, b in map(arm.reading, texts)], None


def measure_arm(arm, parts, pad: int, held, texts: list[str], suffixes: list[list[int]], starts: list[int],
                first: int, rooms: list[int] | None, stop: set[int]) -> tuple[list, list[list[int]] | None, float]:
    """The arm's final hidden states at the held-out rows the teacher's were kept at (what the arm reads
    before each input, then the input's own tokens and the teacher's reply, as the teacher read them; the
    first row predicts the first own token, or with a start token ``first`` the one before), its greedy reply
    to each input (``rooms``: tokens each; None: no replies) and the mean tokens it reads per input."""
    before, cache = _before(arm, parts, texts, suffixes, starts)
    own = [x[b:] for x, b in zip(suffixes, starts)]
    rows = []
    with torch.inference_mode():
        for start in range(0, len(own), BATCH):  # right-padded: each row's tokens where they are alone
            batch = range(start, min(start + BATCH, len(own)))
            hidden = sequence_hidden(parts, [before[i] + own[i] + held.replies[i] for i in batch], pad, cache)
            for i, h in zip(batch, hidden):
                a = len(before[i]) - first  # >= 0: a reading has start tokens or a seam before the input
                rows.append(h[a:a + held.rows(i)])
    replies = None if rooms is None else greedy_batch(parts, cache, [b + o for b, o in zip(before, own)], rooms, stop)
    tokens = sum(len(b) + len(o) for b, o in zip(before, own)) / max(len(own), 1)
    return rows, replies, tokens + (cache.length if cache is not None else 0)


def arm_costs(arms: list, parts, pad: int, start_ids: list[int], queries: list, view) -> list:
    """The cost paths of the model without the context and of each arm, for :class:`.query_costs.QueryCosts`:

    - ``no_context`` and ``truncate`` read each query whole (a truncated reading is prepared beforehand,
      as ICL's is); no one-off cost;
    - ``rag``: the one-off cost is chunking and indexing the context; a query's seconds include retrieving
      its chunks and tokenizing its prompt;
    - ``kv_compressed``: the one-off cost is encoding the context and compressing its cache (kept resident);
      a query reads the context's last token and its own tokens after it."""
    start = list(start_ids)
    paths = [QueryPath(NO_CONTEXT, lambda q, _: answer(parts, start + q.own, q.n, pad), view=view,
                       tokens=lambda q: len(start) + len(q.own))]
    for arm in arms:
        if isinstance(arm, CacheArm):
            paths.append(QueryPath(arm.name, lambda q, cache, a=arm: answer(parts, a.lead + q.suffix, q.n, pad, cache),
                                   setup=lambda a=arm: a.build(parts), view=view,
                                   tokens=lambda q, a=arm: len(a.cached) + len(a.lead) + len(q.suffix)))
        elif arm.index is not None:
            paths.append(QueryPath(arm.name, lambda q, index: answer(parts, index.reading(q.text)[0], q.n, pad),
                                   setup=lambda a=arm: a.rebuilt(), view=view,
                                   tokens=lambda q, a=arm: len(a.reading(q.text)[0])))
        else:
            read = {q.text: arm.reading(q.text)[0] for q in queries}
            paths.append(QueryPath(arm.name, lambda q, _, r=read: answer(parts, r[q.text], q.n, pad), view=view,
                                   tokens=lambda q, r=read: len(r[q.text])))
    return paths
