"""Verbalizer scores of texts read after contexts, by a model with local weights (causal or encoder-decoder).

ICL scores each query after the demonstrations; a CD teacher scores each input after its own context (the
demonstrations, or a leave-one-out subset of them).  Both read context + text as one string; the tokens
every text of a context shares with it are encoded once (KV cache, where the model's capabilities allow)
and only the rest runs per text.  A context reuses the keys/values of what it shares with the prefix
encoded before it (leave-one-out contexts i and i + 1 share demonstrations 0..i-1).  An API model answers
the same questions through :class:`adaptbench.scoring.api.ApiContextScorer`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from .._util import distributed
from ..models.interface import lm_parts
from ..models.loading import LoadedModel, free_memory_bytes
from ..prompts.prompt import PromptEncoder, common_prefix_length
from .core import PrefixCache, auto_batch_size, backing_off, prefix_attention, score
from .scores import Scores


@dataclass
class Reading:
    """Texts read after their contexts: each text's context key and the tokens that run for it (its suffix),
    and per context the length of the prefix all its texts share with it (what a KV cache can hold)."""

    keys: list[Hashable]
    suffixes: list  # token ids (local models) or text (API models)
    shared: dict[Hashable, int]


class LocalContextScorer:
    share_prefixes = True  # False: every context encoded on its own (bench/cd_teacher_cache.py's "before")

    def __init__(self, loaded: LoadedModel, encoder: PromptEncoder, contexts: dict[Hashable, str], *, label: str,
                 batch_size, progress: Callable, info: dict, cache: bool = True):
        self.loaded, self.encoder, self.texts, self.label, self.progress = loaded, encoder, contexts, label, progress
        self.info = info
        self.ids = {key: encoder.encode(text) if text else [] for key, text in contexts.items()}
        self.parts = lm_parts(loaded.model)
        self.requested_batch_size = batch_size
        self.use_cache = cache and loaded.capabilities.prefix_cache is None
        self._pinned: tuple[list[int], PrefixCache] | None = None  # prepare()d: truncated for each text set
        self._last: tuple[list[int], PrefixCache | None] | None = None  # the last prefix encoded, reused in part

    def context_tokens(self, key: Hashable) -> int:
        return len(self.ids[key])

    def prepare(self, key: Hashable) -> dict:
        """Encode the context's KV cache now (ICL: in its own cost phase); what the record says about it."""
        if not self.use_cache or not self.ids[key]:
            return {}
        self._pinned = (self.ids[key], PrefixCache.encode(self.parts, self.ids[key]))
        return {"cache_bytes": self._pinned[1].nbytes, "prefix_attention": prefix_attention(self.loaded.model.config)}

    def read(self, items: list[tuple[Hashable, str]]) -> Reading:
        """Context + text as one string, per context: the shared prefix and each text's suffix."""
        suffixes: list = [None] * len(items)
        shared = {}
        for key in dict.fromkeys(k for k, _ in items):
            members = [i for i, (k, _) in enumerate(items) if k == key]
            shared[key], tails = self.encoder.continuations(self.texts[key], self.ids[key],
                                                            [items[i][1] for i in members])
            for i, tail in zip(members, tails):
                suffixes[i] = tail
        return Reading([k for k, _ in items], suffixes, shared)

    def fits(self, reading: Reading) -> list[bool]:
        return [reading.shared[k] + len(q) <= self.loaded.window for k, q in zip(reading.keys, reading.suffixes)]

    def _cache(self, prefix: list[int]) -> PrefixCache | None:
        if not self.use_cache or not prefix:
            return None
        if self._pinned is not None and prefix == self._pinned[0][:len(prefix)]:
            return self._pinned[1].truncated(len(prefix))
        last = self._last if self.share_prefixes else None
        shared = common_prefix_length(last[0], prefix) if last is not None and last[1] is not None else 0
        if not shared:
            cache = PrefixCache.encode(self.parts, prefix)
        else:
            base = last[1].truncated(shared)
            cache = base if shared == len(prefix) else base.extended(self.parts, prefix[shared:])
        self._last = (prefix, cache)
        return cache

    def _batch_size(self, cache: PrefixCache | None, prefix_len: int, max_query: int) -> int:
        if self.requested_batch_size != "auto":
            return self.requested_batch_size
        device = self.loaded.device
        # On GPU batching is what keeps the device busy.  On CPU a batch barely beats one example at a
        # time on the expanded path (the matmuls are already large) while padding costs; with shared-prefix
        # attention a batch of 32 reads the prefix once for all its queries: 1.1-1.4x the examples/s of
        # batch 8, and 64 slower again (bench/icl_prefix_cache.py, three runs on 2 cores).
        cap = 64 if device.type == "cuda" else 32 if cache is not None and cache.shared else 8
        return auto_batch_size(self.parts, self.loaded.model.config, prefix_len, max_query,
                               free_memory_bytes(device), cap=cap)

    def score(self, reading: Reading, indices: list[int] | None = None, *, name: str = "", cached: bool = True,
              full_vocab: bool = False, shard: bool = False, on_batch: Callable | None = None) -> Scores:
        """Scores of the texts ``indices`` (default: all) in that order; one that does not fit the window is a
        NaN row.  ``shard``: under a multi-process launch every rank scores its share; ``on_batch``: progress
        (default: a bar of its own)."""
        indices = list(range(len(reading.keys))) if indices is None else indices
        n, k, pad = len(indices), len(self.encoder.label_token_ids), self.loaded.tokenizer.pad_token_id
        out = Scores(np.full((n, k), np.nan, dtype=np.float32), np.full(n, np.nan, dtype=np.float32),
                     vocab=np.full((n, self.parts.vocab_size), np.nan, dtype=np.float32) if full_vocab else None)
        fits = self.fits(reading)
        for key in dict.fromkeys(reading.keys[i] for i in indices):
            rows = [r for r, i in enumerate(indices) if reading.keys[i] == key and fits[i]]
            mine = distributed.shard(len(rows)) if shard else list(range(len(rows)))
            if not rows:
                continue
            prefix = self.ids[key][:reading.shared[key]]
            todo = [reading.suffixes[indices[rows[j]]] for j in mine]
            cache = self._cache(prefix) if cached else None
            bs = self._batch_size(cache, len(prefix), max(map(len, todo))) if todo else 1
            with (self.progress(f"{self.label} {name}".strip(), len(todo)) if on_batch is None
                  else _given(on_batch)) as advance:
                s = backing_off(lambda b: score(self.parts, todo, self.encoder.label_token_ids, pad, prefix_ids=prefix,
                                                prefix_cache=cache, batch_size=b, on_batch=advance,
                                                full_vocab=full_vocab), bs, self.requested_batch_size == "auto",
                                self.info)
            targets = [(out.logits, s.logits), (out.log_norm, s.log_norm)] + (
                [(out.vocab, s.vocab)] if full_vocab else [])
            for whole, part in targets:
                whole[rows] = distributed.gather_rows(mine, part, len(rows)) if shard else part
            out.tokens, out.padded_tokens = out.tokens + s.tokens, out.padded_tokens + s.padded_tokens
        if shard:
            out.tokens, out.padded_tokens = distributed.sum_over_ranks(out.tokens, out.padded_tokens)
        return out


class _given:
    """A progress callback passed in, used as the context manager a progress bar would be."""

    def __init__(self, advance: Callable):
        self.advance = advance

    def __enter__(self) -> Callable:
        return self.advance

    def __exit__(self, *exc) -> None:
        return None
