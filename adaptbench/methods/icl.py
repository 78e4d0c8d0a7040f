"""In-context learning: k demonstrations in the context, prediction = argmax over verbalizer tokens.

As in the reference study, one context per data seed is built from the run's sample and reused for
every evaluation example; the model sees the tokens of context + query tokenised as one text.  With
``icl.prefix_cache`` (default) the context is encoded once and only the query tokens run per example
(see :mod:`adaptbench.scoring`); a context that does not fit the model's window skips the run, and a query that does not fit after the context is left unscored and
counted -- nothing is truncated.  An encoder-decoder reads context and query together in its encoder,
so it gets no prefix cache (``method_info.prefix_cache_disabled`` says why).
"""

from __future__ import annotations

import numpy as np

from .._util import distributed
from .api import fit_icl
from ..models.api import is_api
from ..errors import RunSkipped
from ..models.loading import free_memory_bytes
from ..scoring.core import PrefixCache, auto_batch_size, prefix_attention, prefix_cache_unsupported, score
from ..models.interface import lm_parts
from ..data.schema import Example
from .base import Method, Predictions, RunContext, register


@register
class ICL(Method):
    name = "icl"
    description = "in-context learning: k demonstrations in the context, no training"

    def fit(self, ctx: RunContext) -> ICLPredictor:
        loaded = ctx.loaded
        if is_api(loaded):
            return fit_icl(ctx)
        text = ctx.encoder.context_text(ctx.sample)
        context = ctx.encoder.encode(text) if text else []
        if len(context) >= loaded.window:
            raise RunSkipped(f"the context of {len(ctx.sample)} demonstrations is {len(context)} tokens; the "
                             f"model's window is {loaded.window} tokens (no truncation is done)")
        parts = lm_parts(loaded.model)
        use_cache = ctx.spec.icl.prefix_cache and bool(context)
        why_not = prefix_cache_unsupported(loaded.model.config) if use_cache else None
        if why_not:
            use_cache = False
            ctx.info["prefix_cache_disabled"] = why_not
        cache = None
        with ctx.costs.phase("encode_context") as phase:
            if use_cache:
                cache = PrefixCache.encode(parts, context)
                phase.extra["cache_bytes"] = cache.nbytes
                ctx.info["prefix_attention"] = prefix_attention(loaded.model.config)
            phase.tokens = phase.padded_tokens = len(context) if use_cache else 0
        ctx.info.update(context_tokens=len(context), prefix_cache=use_cache, context_text=text)
        return ICLPredictor(loaded, ctx.encoder, text, context, cache, ctx.runtime.batch_size, ctx.progress,
                            info=ctx.info)


class ICLPredictor:
    """Scores examples after a fixed context (cached or not) with a model and its prompt encoder;
    also the teacher's own evaluation in context distillation.

    Each query is tokenised together with the context text; the context's KV cache serves the tokens
    that every query of an eval set shares with it (``method_info.shared_prefix_tokens``).
    """

    def __init__(self, loaded, encoder, context_text: str, context: list[int], cache: PrefixCache | None,
                 batch_size, progress, label: str = "icl", info: dict | None = None):
        self.loaded, self.encoder, self.context_text, self.context, self.cache = (
            loaded, encoder, context_text, context, cache)
        self.parts = lm_parts(loaded.model)
        self.requested_batch_size, self.progress, self.label = batch_size, progress, label
        self.info = info if info is not None else {}

    def batch_size(self, prefix_len: int, max_query: int) -> int:
        if self.requested_batch_size != "auto":
            return self.requested_batch_size
        device = self.loaded.device
        # On GPU batching is what keeps the device busy.  On CPU a batch barely beats one example at a
        # time on the expanded path (the matmuls are already large) while padding costs; with shared-prefix
        # attention a batch of 32 reads the prefix once for all its queries: 1.1-1.4x the examples/s of
        # batch 8, and 64 slower again (bench/icl_prefix_cache.py, three runs on 2 cores).
        shared = self.cache is not None and self.cache.shared
        cap = 64 if device.type == "cuda" else 32 if shared else 8
        return auto_batch_size(self.parts, self.loaded.model.config, prefix_len, max_query,
                               free_memory_bytes(device), cap=cap)

    def predict(self, examples: list[Example], name: str) -> Predictions:
        encoder, window = self.encoder, self.loaded.window
        shared, queries = encoder.continuations(self.context_text, self.context,
                                                [encoder.prompt.query(ex) for ex in examples])
        self.info.setdefault("shared_prefix_tokens", {})[name] = shared
        fits = [i for i, q in enumerate(queries) if shared + len(q) <= window]
        logits = np.full((len(examples), len(encoder.label_token_ids)), np.nan, dtype=np.float32)
        log_norm = np.full(len(examples), np.nan, dtype=np.float32)
        if not fits:
            return Predictions(logits, log_norm)
        mine = distributed.shard(len(fits))  # under a multi-process launch, every rank scores its share
        todo = [queries[fits[i]] for i in mine]
        cache = self.cache.truncated(shared) if self.cache is not None else None
        bs = self.batch_size(shared, max(len(q) for q in todo))
        with self.progress(f"{self.label} {name}", len(todo)) as advance:
            s = score(self.parts, todo, encoder.label_token_ids, self.loaded.tokenizer.pad_token_id,
                      prefix_ids=self.context[:shared], prefix_cache=cache, batch_size=bs, on_batch=advance)
        logits[fits] = distributed.gather_rows(mine, s.logits, len(fits))
        log_norm[fits] = distributed.gather_rows(mine, s.log_norm, len(fits))
        return Predictions(logits, log_norm, *distributed.sum_over_ranks(s.tokens, s.padded_tokens))
