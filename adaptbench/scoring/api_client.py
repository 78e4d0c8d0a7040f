"""GPT-3-style models behind an OpenAI-compatible *completions* endpoint (OpenAI's legacy ``/v1/completions``,
llama.cpp's server, vLLM, ...): the next-token log-probabilities ICL and a CD teacher need, nothing else.

A completions request returns, for the position after the prompt, the top-N tokens with their log-probabilities
(``choices[0].logprobs.top_logprobs[0]``, a dict token text -> log p).  ICL predicts by comparing the verbalizer
tokens' values there, so each verbalizer word must be one token of the *server's* tokenizer:
:meth:`CompletionsClient.verbalizer_tokens` asks the server before a sweep spends money.

Requests go through the official ``openai`` client (retries with exponential backoff on 408/409/429/5xx and
timeouts), ``concurrency`` at a time.  Every response is kept on disk, keyed by a hash of the whole request, so
a rerun or a resumed sweep never pays twice for the same prompt.  Failures become :class:`ModelError` messages
that name the endpoint, the model and what the server said -- never a traceback from inside the client.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Callable
from urllib.parse import urlparse

import numpy as np
import openai

from .._util.files import atomic_write, user_cache
from .._util.secrets import redact, register
from ..errors import ConfigError, ModelError
from .scores import Scores

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
RETRIED_STATUS = (408, 409, 429)  # and every 5xx: what the openai client retries with backoff
CHARS_PER_TOKEN = 4  # the usual rule of thumb for English text with a GPT-style BPE; only for plan()'s estimate


@dataclass(frozen=True)
class Endpoint:
    """Where a model is served and how to call it (hashable: one client per endpoint)."""

    name: str  # the model name the server knows ("gpt-3.5-turbo-instruct", "davinci-002", a llama.cpp alias)
    base_url: str | None  # None: OpenAI's default (or $OPENAI_BASE_URL, as the openai client reads it)
    api_key_env: str = "OPENAI_API_KEY"  # unset: key "none" for a server on localhost, else an error
    top_logprobs: int = 5  # OpenAI's legacy completions return at most 5
    concurrency: int = 4  # requests in flight at once (threads)
    max_retries: int = 5  # the openai client's retries (exponential backoff) on 408/409/429/5xx and timeouts
    timeout_s: float = 60.0

    def __post_init__(self):
        for name, low in (("top_logprobs", 1), ("concurrency", 1), ("max_retries", 0)):
            if getattr(self, name) < low:
                raise ConfigError(f"api endpoint {self.name!r}: {name} must be >= {low}, got {getattr(self, name)}")
        if not self.timeout_s > 0:
            raise ConfigError(f"api endpoint {self.name!r}: timeout_s must be > 0, got {self.timeout_s}")


@dataclass
class ApiUsage:
    """What a call cost: requests sent, answers taken from the disk cache, tokens the server reports."""

    requests: int = 0  # sent to the server (cache hits not counted)
    cached: int = 0  # answered from the disk cache (or by an identical prompt of the same call)
    prompt_tokens: int = 0  # as the server's `usage` reports, for sent requests only
    completion_tokens: int = 0

    def cost(self, per_1k_prompt: float | None, per_1k_completion: float | None) -> float | None:
        """Money spent at these prices per 1,000 tokens; None when a price is not known."""
        if per_1k_prompt is None or per_1k_completion is None:
            return None
        return (self.prompt_tokens * per_1k_prompt + self.completion_tokens * per_1k_completion) / 1000

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, other: ApiUsage) -> ApiUsage:
        """Sum ``other`` into this one (in place); returns self."""
        for key, value in asdict(other).items():
            setattr(self, key, getattr(self, key) + value)
        return self

    def count(self, response: dict, sent: bool) -> None:
        """Account for one answered request."""
        if not sent:
            self.cached += 1
            return
        usage = response.get("usage") or {}
        self.requests += 1
        self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        self.completion_tokens += int(usage.get("completion_tokens") or 0)


class _EchoRefused(ModelError):
    """The server will not echo the prompt's tokens with log-probabilities (OpenAI's gpt-3.5-turbo-instruct)."""


def default_cache_dir() -> str:
    return user_cache("api")


def api_key(point: Endpoint) -> str:
    """The key from the endpoint's environment variable; a local server needs none."""
    key = os.environ.get(point.api_key_env)
    if key:
        register(key)  # never written or printed, whatever a server echoes
        return key
    if point.base_url and urlparse(point.base_url).hostname in LOCAL_HOSTS:
        return "none"  # llama.cpp / vLLM on this machine: any key is accepted unless the server sets one
    raise ModelError(f"model {point.name!r} at {point.base_url or 'OpenAI'}: the API key is read from the "
                     f"environment variable {point.api_key_env}, which is not set; export {point.api_key_env}=<key> "
                     f"(or name another variable with model.api_key_env)")


def server_message(error: openai.APIStatusError) -> str:
    """What the server said, from its JSON error body (OpenAI: {"error": {"message"}}, FastAPI: {"detail"})."""
    body = error.body
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body) if body else error.response.reason_phrase


def retries(point: Endpoint) -> str:
    return f" after {point.max_retries} retries with backoff" if point.max_retries else ""


def api_error(error: openai.OpenAIError, point: Endpoint, url: str) -> ModelError:
    """The one place an openai client error becomes a user-facing message: what failed, where, what to do --
    credentials redacted (a server's error body may echo the request's headers)."""
    found = _api_error(error, point, url)
    return type(found)(redact(str(found)))


def _api_error(error: openai.OpenAIError, point: Endpoint, url: str) -> ModelError:
    where = f"model {point.name!r} at {url}"
    if isinstance(error, openai.APITimeoutError):
        return ModelError(f"{where}: no answer within {point.timeout_s:g} s{retries(point)}; the server is down "
                          f"or overloaded -- or raise runtime.api.timeout_s")
    if isinstance(error, openai.APIConnectionError):
        cause = f": {error.__cause__}" if error.__cause__ else ""
        return ModelError(f"cannot reach {url} (model {point.name!r}){retries(point)}{cause}; is the server "
                          f"running and base_url right?")
    if not isinstance(error, openai.APIStatusError):
        return ModelError(f"{where}: unexpected answer from the server: {error}")
    status, said = error.status_code, server_message(error)
    if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
        return ModelError(f"{where} refused the API key from ${point.api_key_env} (HTTP {status}: {said}); set "
                          f"{point.api_key_env} to a key valid for this endpoint and model")
    if status == 400 and "echo" in said.lower():
        return _EchoRefused(f"{where} does not echo prompt tokens with log-probabilities (HTTP 400: {said})")
    if isinstance(error, openai.NotFoundError) or (status == 400 and point.name in said and "model" in said.lower()):
        return ModelError(f"{where}: the server does not know model {point.name!r}, or base_url is not the root of "
                          f"an OpenAI-compatible API (HTTP {status}: {said}); see {url}/models")
    after = retries(point) if status in RETRIED_STATUS or status >= 500 else ""
    hint = ("; lower runtime.api.concurrency or wait -- answered requests are cached, the same command resumes"
            if status == 429 else "")
    return ModelError(f"{where} answered HTTP {status}{after}: {said}{hint}")


def top_logprobs(response: dict, position: int, point: Endpoint, url: str) -> dict[str, float]:
    """``choices[0].logprobs.top_logprobs[position]`` (token text -> log p), or an error saying it is absent."""
    choices = response.get("choices") or [{}]
    tops = (choices[0].get("logprobs") or {}).get("top_logprobs") or []
    top = tops[position] if -len(tops) <= position < len(tops) else None
    if not top or not isinstance(top, dict):
        raise ModelError(f"model {point.name!r} at {url} returned no log-probabilities (choices[0].logprobs."
                         f"top_logprobs is empty); the endpoint must support `logprobs` on /completions "
                         f"(llama.cpp's Python server: logits_all true)")
    return {str(k): float(v) for k, v in top.items()}


def floor_of(top: dict[str, float]) -> float:
    """An upper bound on the log-probability of any token not in ``top`` (see :meth:`CompletionsClient.next_token_logprobs`)."""
    lowest = min(top.values())
    rest = 1.0 - sum(math.exp(v) for v in top.values())
    return min(lowest, math.log(rest)) if rest > 0 else lowest


def pick(top: dict[str, float], tokens: list[str]) -> tuple[list[float], list[bool], float]:
    """The tokens' values in one row of top log-probabilities, missing ones floored."""
    floor = floor_of(top)
    missing = [t not in top for t in tokens]
    return [floor if m else top[t] for t, m in zip(tokens, missing)], missing, floor


def echoed_word(response: dict, anchor: str, word: str) -> list[str] | None:
    """The tokens the server made of ``word`` after ``anchor``, from an echo of ``anchor + word``, starting
    with the token that holds the seam (a token spanning it makes the word no token of its own); None when
    the echo does not spell out the prompt (a server that ignores ``echo``)."""
    logprobs = (response.get("choices") or [{}])[0].get("logprobs") or {}
    prompt = anchor + word
    inside = [(t, o) for t, o in zip(logprobs.get("tokens") or [], logprobs.get("text_offset") or [])
              if o < len(prompt)]
    if "".join(t for t, _ in inside) != prompt:
        return None
    seam = max(i for i, (_, o) in enumerate(inside) if o <= len(anchor))
    return [t for t, _ in inside[seam:]]


class CompletionsClient:
    """Next-token log-probabilities from an OpenAI-compatible completions endpoint, cached on disk."""

    def __init__(self, endpoint: Endpoint, cache_dir: str | None = None, http_client=None):
        self.endpoint = endpoint
        self.cache_dir = cache_dir or default_cache_dir()
        self.client = openai.OpenAI(base_url=endpoint.base_url, api_key=api_key(endpoint),
                                    max_retries=endpoint.max_retries, timeout=endpoint.timeout_s,
                                    http_client=http_client)
        self.url = str(self.client.base_url).rstrip("/")
        self.usage = ApiUsage()  # everything this client did, verbalizer checks included

    def close(self) -> None:
        self.client.close()

    # -- requests and the disk cache ------------------------------------------------------------------------

    def _cache_path(self, params: dict) -> str:
        request = json.dumps({"base_url": self.url, **params}, sort_keys=True, ensure_ascii=False)
        key = hashlib.sha256(request.encode("utf-8")).hexdigest()
        return os.path.join(self.cache_dir, key[:2], key + ".json")

    @staticmethod
    def _read_cache(path: str) -> dict | None:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)["response"]
        except (OSError, ValueError, KeyError, TypeError):
            return None  # absent (or unreadable: asked again and rewritten)

    def _fetch(self, params: dict) -> tuple[dict, bool]:
        """``(response, sent)``: the cached answer to this exact request, or the server's (then cached)."""
        path = self._cache_path(params)
        cached = self._read_cache(path)
        if cached is not None:
            return cached, False
        try:
            response = self.client.completions.create(**params).to_dict()
        except openai.OpenAIError as e:
            raise api_error(e, self.endpoint, self.url) from None
        atomic_write(path, redact(json.dumps({"request": {"base_url": self.url, **params}, "response": response},
                                             ensure_ascii=False)))
        return response, True

    def _params(self, prompt: str, **overrides) -> dict:
        """A one-token greedy completion with the top-N log-probabilities of that token."""
        return {"model": self.endpoint.name, "prompt": prompt, "max_tokens": 1, "temperature": 0,
                "logprobs": self.endpoint.top_logprobs, "echo": False, **overrides}

    def _ask(self, params: dict) -> dict:
        response, sent = self._fetch(params)
        self.usage.count(response, sent)
        return response

    # -- verbalizer check -----------------------------------------------------------------------------------

    def verbalizer_tokens(self, words: list[str], anchor: str = "answer:") -> list[str]:
        """Each word's token text as it follows ``anchor`` (the key to look up in top log-probabilities),
        after checking with the server -- one cheap request per word -- that it is exactly one token, that
        the words are distinct tokens and that log-probabilities come back at all."""
        tokens = [self._word_token(word, anchor) for word in words]
        for i, token in enumerate(tokens):
            if token in tokens[:i]:
                raise ModelError(f"verbalizer words {words[tokens.index(token)]!r} and {words[i]!r} are the same "
                                 f"token {token!r} for model {self.endpoint.name!r} at {self.url}")
        return tokens

    def _word_token(self, word: str, anchor: str) -> str:
        pieces = self._echoed_pieces(anchor, word)
        if pieces is None:  # no echo with log-probs (gpt-3.5-turbo-instruct): count tokens through `usage`
            n = self._token_count(anchor + word) - self._token_count(anchor)
            pieces = [word] if n == 1 else None
            detail = f"{n} tokens (this endpoint does not echo tokens, so the pieces cannot be shown)"
        else:
            joined = "" if "".join(pieces) == word else f" (the first joins the end of {anchor!r})"
            detail = f"{pieces}{joined}"
        if pieces != [word]:
            raise ModelError(f"verbalizer {word!r} is not exactly one token after {anchor!r} for model "
                             f"{self.endpoint.name!r} at {self.url}: it becomes {detail}; choose a word that is "
                             f"a single token for this model")
        return pieces[0]

    def _echoed_pieces(self, anchor: str, word: str) -> list[str] | None:
        try:
            response = self._ask(self._params(anchor + word, echo=True, logprobs=1))
        except _EchoRefused:
            return None
        top_logprobs(response, -1, self.endpoint, self.url)  # the generated token's: log-probs come back
        return echoed_word(response, anchor, word)

    def _token_count(self, prompt: str) -> int:
        response = self._ask(self._params(prompt, logprobs=1))
        top_logprobs(response, 0, self.endpoint, self.url)
        count = (response.get("usage") or {}).get("prompt_tokens")
        if not count:
            raise ModelError(f"model {self.endpoint.name!r} at {self.url} reports no usage.prompt_tokens and does "
                             f"not echo tokens: the verbalizer cannot be checked against its tokenizer")
        return int(count)

    # -- scoring --------------------------------------------------------------------------------------------

    def next_token_logprobs(self, prompts: list[str], tokens: list[str],
                            progress: Callable[[int], None] | None = None) -> Scores:
        """Each prompt's next-token log-probabilities of ``tokens`` (from :meth:`verbalizer_tokens`): one
        greedy one-token request per distinct prompt, ``concurrency`` in flight, every answer cached on disk.
        ``progress(n)`` is called as prompts are done (cached ones first, at once).

        An endpoint returns only its top-N tokens.  A verbalizer token outside them gets the row's ``floor``: an
        *upper bound* on its log-probability -- it is at most the N-th best value, and at most the mass the
        top-N leave, ``log(1 - sum(exp(top)))`` -- and ``missing`` says which values are such bounds.  Two
        missing tokens of one row tie (the first label is predicted); count them before trusting such rows."""
        requests, paths = {}, []  # cache path -> request (one per distinct prompt); each prompt's path
        for prompt in prompts:
            params = self._params(prompt)
            paths.append(self._cache_path(params))
            requests.setdefault(paths[-1], params)
        answers = self._answers(requests, Counter(paths), progress)
        return self._scores(paths, answers, tokens)

    def _answers(self, requests: dict, counts: Counter, progress) -> dict[str, tuple[dict, bool]]:
        """``path -> (response, sent)`` for every request: the disk cache first, then the server."""
        answers, todo = {}, {}
        for path, params in requests.items():
            cached = self._read_cache(path)
            if cached is None:
                todo[path] = params
            else:
                answers[path] = (cached, False)
        if progress and answers:
            progress(sum(counts[p] for p in answers))
        answers.update(self._send_all(todo, counts, progress))
        return answers

    def _send_all(self, todo: dict, counts: Counter, progress) -> dict[str, tuple[dict, bool]]:
        """Send ``concurrency`` requests at a time.  On the first failure the ones not yet started are cancelled
        (what was answered is cached: calling again resumes from there)."""
        answers = {}
        if not todo:
            return answers
        pool = ThreadPoolExecutor(max_workers=self.endpoint.concurrency, thread_name_prefix="api")
        try:
            futures = {pool.submit(self._fetch, params): path for path, params in todo.items()}
            for future in as_completed(futures):
                path = futures[future]
                answers[path] = future.result()
                if progress:
                    progress(counts[path])
        finally:
            pool.shutdown(cancel_futures=True)  # after a failure: drop the queued, let the in-flight finish
        return answers

    def _scores(self, paths: list[str], answers: dict, tokens: list[str]) -> Scores:
        usage, seen, rows = ApiUsage(), set(), []
        for path in paths:
            response, sent = answers[path]
            usage.count(response, sent and path not in seen)  # a repeated prompt was answered once
            seen.add(path)
            rows.append(pick(top_logprobs(response, 0, self.endpoint, self.url), tokens))
        self.usage.add(usage)
        n, k = len(paths), len(tokens)
        logprobs = np.array([r[0] for r in rows], dtype=np.float32).reshape(n, k)
        missing = np.array([r[1] for r in rows], dtype=bool).reshape(n, k)
        return Scores(logprobs, np.zeros(n, dtype=np.float32), usage.prompt_tokens, usage.prompt_tokens,
                      missing=missing, floor=np.array([r[2] for r in rows], dtype=np.float32), usage=usage)

    def plan(self, prompts: list[str]) -> dict:
        """A dry run: how many of these prompts would be sent (not in the cache yet) and about how many prompt
        tokens they hold -- an estimate at ~4 characters per token; the server's tokenizer decides.  Sends
        nothing."""
        paths = {self._cache_path(self._params(p)): p for p in prompts}
        todo = [p for path, p in paths.items() if not os.path.isfile(path)]
        chars = sum(len(p) for p in todo)
        return {"requests": len(todo), "cached": len(prompts) - len(todo), "prompt_chars": chars,
                "approx_prompt_tokens": round(chars / CHARS_PER_TOKEN),
                "note": f"approx_prompt_tokens is an estimate (~{CHARS_PER_TOKEN} characters per token) of the "
                        f"requests not yet cached"}
