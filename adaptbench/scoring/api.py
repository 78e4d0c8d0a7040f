"""Scoring through a model behind an HTTP API: the verbalizer words as the server's tokens, the verbalizer
tokens' log-probabilities after each prompt *text* (the server tokenises it), and requests, cache hits,
tokens and cost in the record.

A completions endpoint gives, for a prompt, the top-N log-probabilities of the next token -- the same
question ICL asks a local model at the answer position.  The verbalizer words must be single tokens of
the server's tokenizer (asked before a sweep spends money: ``sweep.preflight``).  The client
(:mod:`adaptbench.scoring.api_client`) caches every response on disk and retries with backoff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable

from ..config.settings import ModelSpec
from .context import Reading
from .scores import Scores


def endpoint(spec: ModelSpec, runtime):
    """The client's view of an api model: the spec's endpoint and the runtime's request settings."""
    from .api_client import Endpoint  # imports openai: only sweeps with api models pay for it

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


def add_usage(info: dict, usage, runtime) -> None:
    """Sum a call's usage into ``method_info.api_usage`` (requests, cache hits, tokens, and cost if priced)."""
    from .api_client import ApiUsage

    total = ApiUsage(**{k: v for k, v in info.get("api_usage", {}).items() if k in ApiUsage().to_dict()})
    total.add(usage)
    info["api_usage"] = {**total.to_dict(), "cost": total.cost(runtime.api.price_per_1k_prompt,
                                                               runtime.api.price_per_1k_completion)}


class ApiContextScorer:
    """:class:`adaptbench.scoring.context.LocalContextScorer`'s questions, through an endpoint: one request per
    text (context + text as one prompt), the verbalizer tokens' log-probabilities read from the returned top-N
    (missing ones floored and counted in ``method_info.<label>_api_missing``).  The server keeps no cache
    adaptbench can reuse, and refuses what does not fit its window (a failed run with its message)."""

    def __init__(self, spec: ModelSpec, encoder: ApiPromptEncoder, contexts: dict[Hashable, str], *, label: str,
                 runtime, progress: Callable, info: dict):
        self.api, self.encoder, self.texts = client(spec, runtime), encoder, contexts
        self.label, self.runtime, self.progress, self.info = label, runtime, progress, info

    def context_tokens(self, key: Hashable) -> None:
        return None  # the server's tokenizer decides

    def prepare(self, key: Hashable) -> dict:
        return {}

    def read(self, items: list[tuple[Hashable, str]]) -> Reading:
        return Reading([k for k, _ in items], [self.texts[k] + text for k, text in items], {k: 0 for k, _ in items})

    def fits(self, reading: Reading) -> list[bool]:
        return [True] * len(reading.keys)

    def score(self, reading: Reading, indices: list[int] | None = None, *, name: str = "", cached: bool = True,
              full_vocab: bool = False, shard: bool = False, on_batch: Callable | None = None) -> Scores:
        indices = list(range(len(reading.keys))) if indices is None else indices
        prompts = [reading.suffixes[i] for i in indices]
        if on_batch is None:
            with self.progress(f"{self.label} {name}".strip(), len(prompts)) as advance:
                scores = self.api.next_token_logprobs(prompts, self.encoder.label_tokens, progress=advance)
        else:
            scores = self.api.next_token_logprobs(prompts, self.encoder.label_tokens, progress=on_batch)
        add_usage(self.info, scores.usage, self.runtime)
        if name:
            self.info.setdefault(f"{self.label}_api_missing", {})[name] = {
                "examples": int(scores.missing.any(axis=1).sum()), "per_label": scores.missing.sum(axis=0).tolist()}
        return scores
