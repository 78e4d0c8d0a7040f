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

import torch

from ..config.settings import ModelSpec
from ..errors import ModelError
from .loading import LoadedModel


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
    from .api_client import (
        Endpoint,  # imports openai: only sweeps with api models pay for it
    )

    opts = runtime.api
    return Endpoint(name=spec.name, base_url=spec.base_url, api_key_env=spec.api_key_env or "OPENAI_API_KEY",
                    top_logprobs=spec.top_logprobs or 5, concurrency=opts.concurrency, max_retries=opts.max_retries,
                    timeout_s=opts.timeout_s)


@functools.lru_cache(maxsize=16)
def _client(point, cache_dir: str | None):
    from .api_client import CompletionsClient

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
    from ..data.sampling import few_shot_sample

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
