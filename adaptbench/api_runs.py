"""Models behind an HTTP API in a sweep: loading one (a client, no weights), its prompt encoder, ICL through
it, a CD teacher through it, the check before a sweep and the dry-run's request count.

A completions endpoint gives, for a prompt, the top-N log-probabilities of the next token -- the same
question ICL asks a local model at the answer position, with the prompt *text* (the server tokenises
it).  The verbalizer words must be single tokens of the server's tokenizer; :func:`check_endpoints`
asks the server before any run spends money.  The client (:mod:`adaptbench.api_models`) caches every
response on disk and retries with backoff; the record gets requests, cache hits, tokens and cost.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .errors import ModelError
from .metrics import eval_set_metrics
from .models import LoadedModel
from .settings import ModelSpec


class ApiModel(torch.nn.Module):
    """Stands where a local model would (no parameters): the spec it calls."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.config = None


def is_api(loaded: LoadedModel) -> bool:
    return isinstance(loaded.model, ApiModel)


def load_api_model(spec: ModelSpec) -> LoadedModel:
    source = f"api:{spec.base_url or 'https://api.openai.com/v1'}/{spec.name}"
    return LoadedModel(ApiModel(spec), None, source, torch.device("cpu"), torch.float32, window=0,
                       info={"api": spec.api, "base_url": spec.base_url, "model_type": "api"})


def endpoint(spec: ModelSpec, runtime):
    """The client's view of an api model: the spec's endpoint and the runtime's request settings."""
    from .api_models import Endpoint  # imports openai: only sweeps with api models pay for it

    opts = runtime.api
    return Endpoint(name=spec.name, base_url=spec.base_url, api_key_env=spec.api_key_env or "OPENAI_API_KEY",
                    top_logprobs=spec.top_logprobs or 5, concurrency=opts.concurrency, max_retries=opts.max_retries,
                    timeout_s=opts.timeout_s)


@functools.lru_cache(maxsize=16)
def _client(point, cache_dir: str | None):
    from .api_models import CompletionsClient

    return CompletionsClient(point, cache_dir=cache_dir)


def client(spec: ModelSpec, runtime):
    """One client per endpoint and process (its connections and response cache are reused across runs)."""
    return _client(endpoint(spec, runtime), runtime.api.cache_dir)


class ApiPromptEncoder:
    """The prompt bound to an api model: the verbalizer words as the server's tokens (texts, not ids)."""

    def __init__(self, api, prompt, label_names: tuple[str, ...]):
        self.prompt, self.label_names = prompt, label_names
        self.label_tokens = api.verbalizer_tokens(list(prompt.verbalizer))
        self.label_token_ids: list[int] = []  # the server's ids are not exposed by completions endpoints

    def context_text(self, demonstrations: list) -> str:
        return self.prompt.context(demonstrations)


def prompt_texts(encoder, context: str, examples: list) -> list[str]:
    """What the server reads for each example: the context and the query as one text (as locally)."""
    return [context + encoder.prompt.query(ex) for ex in examples]


def add_usage(info: dict, usage, runtime) -> None:
    """Sum a call's usage into ``method_info.api_usage`` (requests, cache hits, tokens, and cost if priced)."""
    from .api_models import ApiUsage

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
        from .methods.base import Predictions

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


def api_specs(run) -> list[ModelSpec]:
    """The api models a run calls: its model, or its CD teacher."""
    specs = [run.model] + ([run.cd.teacher] if run.cd is not None and run.cd.teacher is not None else [])
    return [s for s in specs if s.api is not None]


def check_endpoints(runs: list, inputs: dict, runtime) -> None:
    """Before a sweep spends money: each endpoint is reachable with the key, knows the model, returns
    log-probabilities and has each verbalizer word as one token (a clear ModelError otherwise)."""
    seen = set()
    for run in runs:
        words = tuple(inputs[run.run_id].prompt.verbalizer)
        for spec in api_specs(run):
            if (spec, words) not in seen:
                seen.add((spec, words))
                client(spec, runtime).verbalizer_tokens(list(words))


def planned_requests(run, inputs, runtime) -> dict:
    """For ``--dry-run``: the requests an api run would send (not yet cached) and about how many tokens."""
    from .sampling import few_shot_sample

    specs = api_specs(run)
    task, prompt = inputs.task, inputs.prompt
    sample = few_shot_sample(inputs.pool, run.shots, run.data_seed, len(task.labels.names), run.balanced)
    context = prompt.context(sample)
    texts = [context + prompt.query(ex) for _, examples, _ in inputs.evals for ex in examples]
    if run.method == "cd":  # the teacher's leave-one-out contexts over the sample (unlabelled inputs: about as many)
        texts += [prompt.context(sample[:i] + sample[i + 1:]) + prompt.query(ex) for i, ex in enumerate(sample)]
    try:
        return client(specs[0], runtime).plan(texts)
    except ModelError as e:
        return {"error": str(e)}
