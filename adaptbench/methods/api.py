"""ICL and a CD teacher through a model behind an HTTP API: the prompt *text* goes to the server, the
verbalizer tokens' log-probabilities come back (:mod:`adaptbench.models.api_client`); the record gets
requests, cache hits, tokens and cost.
"""

from __future__ import annotations

import numpy as np

from ..config.settings import ModelSpec
from ..measure.metrics import eval_set_metrics
from ..models.api import ApiPromptEncoder, client
from ..models.loading import LoadedModel


def prompt_texts(encoder, context: str, examples: list) -> list[str]:
    """What the server reads for each example: the context and the query as one text (as locally)."""
    return [context + encoder.prompt.query(ex) for ex in examples]


def add_usage(info: dict, usage, runtime) -> None:
    """Sum a call's usage into ``method_info.api_usage`` (requests, cache hits, tokens, and cost if priced)."""
    from ..models.api_client import ApiUsage

    total = ApiUsage(**{k: v for k, v in info.get("api_usage", {}).items() if k in ApiUsage().to_dict()})
    total.add(usage)
    info["api_usage"] = {**total.to_dict(), "cost": total.cost(runtime.api.price_per_1k_prompt,
                                                               runtime.api.price_per_1k_completion)}


class ApiICLPredictor:
    """ICL through the endpoint: one request per example, the verbalizer tokens' log-probabilities read
    from the returned top-N (missing ones floored and counted in ``method_info.<label>_api_missing``)."""

    def __init__(self, ctx, spec: ModelSpec, encoder: ApiPromptEncoder, context: str, label: str = "icl"):
        self.api, self.encoder, self.context = client(spec, ctx.runtime), encoder, context
        self.ctx, self.label = ctx, label

    def predict(self, examples: list, name: str):
        from .base import Predictions

        prompts = prompt_texts(self.encoder, self.context, examples)
        with self.ctx.progress(f"{self.label} {name}", len(prompts)) as advance:
            scores = self.api.next_token_logprobs(prompts, self.encoder.label_tokens, progress=advance)
        add_usage(self.ctx.info, scores.usage, self.ctx.runtime)
        self.ctx.info.setdefault(f"{self.label}_api_missing", {})[name] = {
            "examples": int(scores.missing.any(axis=1).sum()), "per_label": scores.missing.sum(axis=0).tolist()}
        logits = scores.logprobs.astype(np.float32)
        # the returned values are log-probabilities under the full distribution: log-normaliser 0
        return Predictions(logits, np.zeros(len(examples), dtype=np.float32), scores.usage.prompt_tokens,
                           scores.usage.prompt_tokens)


def fit_icl(ctx) -> ApiICLPredictor:
    """ICL.fit for an api model: nothing to encode, the context is text."""
    text = ctx.encoder.context_text(ctx.sample)
    ctx.info.update(context_text=text, prefix_cache=False, prefix_cache_disabled="api model: the server keeps no "
                    "state adaptbench can reuse (its own prompt caching, if any, is the server's)",
                    api_endpoint=ctx.loaded.source)
    return ApiICLPredictor(ctx, ctx.loaded.model.spec, ctx.encoder, text)


class ApiTeacher:
    """A CD teacher behind an endpoint (``cd.target: labels``): its verbalizer distribution with each
    input's (leave-one-out) context becomes the local student's target."""

    def __init__(self, ctx, loaded: LoadedModel, texts: dict, keys: list, inputs: list):
        self.ctx, self.loaded, self.texts, self.keys = ctx, loaded, texts, keys
        self.encoder = ApiPromptEncoder(client(loaded.model.spec, ctx.runtime), ctx.encoder.prompt,
                                        ctx.task.labels.names)
        self.prompts = [texts[k] + ctx.encoder.prompt.query(ex) for k, ex in zip(keys, inputs)]
        self.fits = [True] * len(inputs)  # the server refuses what does not fit: a failed run with its reason
        self.temperature = ctx.spec.cd.temperature

    def targets(self, indices: list[int], cached: bool = True, progress=None) -> np.ndarray:
        api = client(self.loaded.model.spec, self.ctx.runtime)
        scores = api.next_token_logprobs([self.prompts[i] for i in indices], self.encoder.label_tokens, progress)
        add_usage(self.ctx.info, scores.usage, self.ctx.runtime)
        z = scores.logprobs.astype(np.float64) / self.temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)

    def evaluate(self, ctx) -> dict[str, np.ndarray]:
        """The teacher's own ICL predictions (full context) on every eval set: a reference point."""
        icl = ApiICLPredictor(ctx, self.loaded.model.spec, self.encoder, self.texts[("full", 0)], label="teacher")
        preds = {name: icl.predict(examples, name).labels for name, _, examples in ctx.evals}
        ctx.info["teacher_metrics"] = {name: eval_set_metrics(eval_set, examples, preds[name])
                                       for name, eval_set, examples in ctx.evals}
        return preds
