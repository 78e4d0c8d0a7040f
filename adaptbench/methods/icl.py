"""In-context learning: k demonstrations in the context, prediction = argmax over verbalizer tokens.

As in the reference study, one context per data seed is built from the run's sample and reused for
every evaluation example; the model reads context + query as one text.  With ``icl.prefix_cache``
(default) the context is encoded once and only the query tokens run per example, where the model's
capabilities allow (:mod:`adaptbench.scoring.context`; an encoder-decoder or a model behind an API says
why not, in ``method_info.capabilities_off``).  A context that does not fit the model's window skips the
run, and a query that does not fit after the context is left unscored and counted -- nothing is truncated.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..config.settings import Strict
from ..data.schema import Example
from ..errors import RunSkipped
from ..scoring.interface import ContextScorer
from ..scoring.scores import Scores
from .base import Method, MethodInfo, RunContext, register

CONTEXT = "context"  # the one context key of an ICL run


class ICLSettings(Strict):
    prefix_cache: bool = Field(True, description="encode the demonstrations once and reuse their KV cache")


class ICLInfo(MethodInfo):
    """``method_info`` of an ICL run."""

    context_text: str | None = Field(None, description="the demonstrations as the model read them")
    context_tokens: int | None = Field(None, description="their tokens (absent: a model behind an API tokenises)")
    prefix_cache: bool | None = Field(None, description="whether their KV cache was encoded once and reused")
    prefix_attention: str | None = Field(None, description="shared (one copy of the prefix per batch) or expanded "
                                         "(<why not shared>)")
    shared_prefix_tokens: dict[str, int] = Field(default_factory=dict, description="eval set -> tokens of the "
                                                 "context every query shares (what the cache served)")
    api_usage: dict[str, Any] | None = Field(None, description="api model: requests, cached, prompt_tokens, "
                                             "completion_tokens, cost")
    icl_api_missing: dict[str, dict] | None = Field(None, description="api model: per eval set, examples (and per "
                                                    "label) whose verbalizer token was not in the top-N returned")


@register
class ICL(Method):
    name = "icl"
    description = "in-context learning: k demonstrations in the context, no training"
    settings = ICLSettings
    info = ICLInfo
    api_models = True

    def fit(self, ctx: RunContext) -> ICLPredictor:
        model = ctx.scoring_model()
        text = ctx.encoder.context_text(ctx.sample)
        scorer = model.scorer(ctx.encoder, {CONTEXT: text}, label="icl", progress=ctx.progress, info=ctx.info,
                              batch_size=ctx.runtime.batch_size, cache=ctx.spec.icl.prefix_cache)
        ctx.info.update(context_text=text, capabilities_off=model.capabilities.off())
        tokens = scorer.context_tokens(CONTEXT)
        if tokens is None:  # the server tokenises: nothing to encode here
            ctx.info["prefix_cache"] = False
            return ICLPredictor(scorer, ctx.encoder, ctx.info)
        if tokens >= ctx.loaded.window:
            raise RunSkipped(f"the context of {len(ctx.sample)} demonstrations is {tokens} tokens; the "
                             f"model's window is {ctx.loaded.window} tokens (no truncation is done)")
        with ctx.costs.phase("encode_context") as phase:
            about = scorer.prepare(CONTEXT)
            phase.extra.update({k: v for k, v in about.items() if k == "cache_bytes"})
            phase.tokens = phase.padded_tokens = tokens if about else 0
        ctx.info.update({k: v for k, v in about.items() if k != "cache_bytes"})
        ctx.info.update(context_tokens=tokens, prefix_cache=bool(about))
        return ICLPredictor(scorer, ctx.encoder, ctx.info)


class ICLPredictor:
    """Scores examples after the context; also the CD teacher's own evaluation.  The context's cache serves
    the tokens every query of an eval set shares with it (``method_info.shared_prefix_tokens``)."""

    def __init__(self, scorer: ContextScorer, encoder, info: dict, key=CONTEXT):
        self.scorer, self.encoder, self.info, self.key = scorer, encoder, info, key

    def predict(self, examples: list[Example], name: str) -> Scores:
        reading = self.scorer.read([(self.key, self.encoder.prompt.query(ex)) for ex in examples])
        if self.scorer.context_tokens(self.key) is not None:
            self.info.setdefault("shared_prefix_tokens", {})[name] = reading.shared[self.key]
        return self.scorer.score(reading, name=name, shard=True)
