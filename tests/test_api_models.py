"""The completions-API client (adaptbench.api_models).

Fast tests: the official openai client over an ``httpx.MockTransport`` that plays an OpenAI-compatible
``/v1/completions`` endpoint (top log-probabilities, echo, usage, errors).  Slow tests: real requests to
llama.cpp's server with SmolLM2-135M, and how often its predictions agree with adaptbench's own scoring
of the same ICL prompts through transformers.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from adaptbench.scoring.api_client import ApiUsage, CompletionsClient, Endpoint, api_key, floor_of
from adaptbench.errors import ModelError

LOCAL = "http://127.0.0.1:9/v1"  # never contacted: the mock transport answers
TOP = {" No": -0.4, " Yes": -1.3, " Maybe": -3.0, "\n": -3.5, " The": -4.0}


def fake_tokens(text: str) -> list[str]:
    """A toy tokenizer: " Yes"/" No" are tokens, " Maybe" is " May" + "be", ":x" one token."""
    return re.findall(r"answer|:x|:| Yes| No| May|be| ?\w+|\s|.", text)


class FakeEndpoint:
    """An OpenAI-style completions endpoint: ``top(prompt)`` gives the next token's top log-probabilities;
    ``failures`` is a list of (status, body) answered before the real answers (the last one repeats when
    ``forever``).  Counts calls and the most requests in flight at once."""

    def __init__(self, top=lambda prompt: TOP, failures=(), forever=False, delay=0.0, echo=True, logprobs=True,
                 refused=()):
        self.top, self.failures, self.forever, self.refused = top, list(failures), forever, set(refused)
        self.delay, self.echo, self.logprobs = delay, echo, logprobs
        self.calls, self.bodies, self.in_flight, self.max_in_flight = 0, [], 0, 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        with self.lock:
            self.calls += 1
            self.bodies.append(body)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            return self.answer(body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def answer(self, body: dict) -> httpx.Response:
        if self.failures:
            status, error = self.failures[0] if self.forever else self.failures.pop(0)
            return httpx.Response(status, json=error, headers={"retry-after-ms": "1"})
        if body.get("echo") and not self.echo:
            return httpx.Response(400, json={"error": {"message": "Setting 'echo' and 'logprobs' at the same time "
                                                                  "is not supported for this model."}})
        prompt = body["prompt"]
        if prompt in self.refused:
            return httpx.Response(400, json={"error": {"message": f"cannot read {prompt!r}"}})
        top = self.top(prompt)
        first = max(top, key=top.get)
        tokens, tops = [first], [top]
        if body.get("echo"):
            tokens, tops = fake_tokens(prompt) + tokens, [None] + [{"x": -1.0}] * (len(fake_tokens(prompt)) - 1) + tops
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        logprobs = {"tokens": tokens, "text_offset": offsets, "token_logprobs": [None] + [-1.0] * (len(tokens) - 1),
                    "top_logprobs": tops} if self.logprobs else None
        return httpx.Response(200, json={
            "id": "cmpl-1", "object": "text_completion", "created": 0, "model": body["model"],
            "choices": [{"text": first, "index": 0, "finish_reason": "length", "logprobs": logprobs}],
            "usage": {"prompt_tokens": len(fake_tokens(prompt)), "completion_tokens": 1,
                      "total_tokens": len(fake_tokens(prompt)) + 1}})


def make_client(fake: FakeEndpoint, tmp_path, **endpoint) -> CompletionsClient:
    point = Endpoint(name=endpoint.pop("name", "davinci-002"), base_url=endpoint.pop("base_url", LOCAL), **endpoint)
    return CompletionsClient(point, cache_dir=str(tmp_path / "cache"),
                             http_client=httpx.Client(transport=httpx.MockTransport(fake)))


def raised(fake: FakeEndpoint, tmp_path, call, **endpoint) -> str:
    """The message of the ModelError that ``call(client)`` raises; it must carry no library traceback."""
    with pytest.raises(ModelError) as info:
        call(make_client(fake, tmp_path, **endpoint))
    error = info.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)
    return str(info.value)


PROMPTS = [f"premise {i} question: hypothesis {i} Yes or No? answer:" for i in range(6)]


# -- scores ---------------------------------------------------------------------------------------------------

def test_scores_are_read_from_the_top_logprobs(tmp_path):
    fake = FakeEndpoint(top=lambda p: {" Yes": -0.2, " No": -1.9, " The": -3.0} if "1" in p else TOP)
    scores = make_client(fake, tmp_path).next_token_logprobs(PROMPTS[:3], [" Yes", " No"])
    np.testing.assert_allclose(scores.logits, [[-1.3, -0.4], [-0.2, -1.9], [-1.3, -0.4]], rtol=1e-6)
    assert not scores.missing.any() and scores.logits.dtype == np.float32
    assert scores.predictions.tolist() == [1, 0, 1]
    body = fake.bodies[0]
    assert (body["max_tokens"], body["temperature"], body["logprobs"], body["echo"]) == (1, 0, 5, False)


def test_a_missing_verbalizer_token_gets_the_row_floor_and_is_counted(tmp_path):
    top = {" No": -0.1, "\n": -3.0, " The": -4.0}
    scores = make_client(FakeEndpoint(top=lambda p: top), tmp_path).next_token_logprobs(PROMPTS[:2], [" Yes", " No"])
    assert scores.missing.tolist() == [[True, False], [True, False]]
    floor = min(-4.0, math.log(1 - sum(math.exp(v) for v in top.values())))
    np.testing.assert_allclose(scores.floor, [floor, floor], rtol=1e-6)
    np.testing.assert_allclose(scores.logits[:, 0], floor, rtol=1e-6)


def test_the_floor_is_an_upper_bound_for_any_token_not_returned():
    assert floor_of({"a": math.log(0.5), "b": math.log(0.4)}) == pytest.approx(math.log(0.1))  # the mass left
    assert floor_of({"a": math.log(0.5), "b": math.log(0.05)}) == pytest.approx(math.log(0.05))  # the N-th best
    assert floor_of({"a": 0.0}) == 0.0  # nothing left (rounding): the lowest value returned


def test_usage_is_summed_and_priced(tmp_path):
    scores = make_client(FakeEndpoint(), tmp_path).next_token_logprobs(PROMPTS, [" Yes", " No"])
    tokens = sum(len(fake_tokens(p)) for p in PROMPTS)
    assert scores.usage.to_dict() == {"requests": 6, "cached": 0, "prompt_tokens": tokens, "completion_tokens": 6}
    usage = ApiUsage(prompt_tokens=2000, completion_tokens=500)
    assert usage.cost(1.5, 2.0) == pytest.approx(4.0)
    assert usage.cost(None, 2.0) is None
    assert ApiUsage(1, 2, 3, 4).add(ApiUsage(10, 20, 30, 40)) == ApiUsage(11, 22, 33, 44)


def test_the_disk_cache_answers_a_second_call_without_requests(tmp_path):
    fake = FakeEndpoint()
    first = make_client(fake, tmp_path).next_token_logprobs(PROMPTS, [" Yes", " No"])
    calls = fake.calls
    done = []
    again = make_client(fake, tmp_path).next_token_logprobs(PROMPTS, [" Yes", " No"], progress=done.append)
    assert fake.calls == calls == 6
    np.testing.assert_array_equal(again.logits, first.logits)
    assert (again.usage.requests, again.usage.cached, again.usage.prompt_tokens) == (0, 6, 0)
    assert sum(done) == 6
    files = list((tmp_path / "cache").glob("*/*.json"))
    assert len(files) == 6 and all(f.parent.name == f.name[:2] for f in files)


def test_a_repeated_prompt_is_sent_once(tmp_path):
    fake, done = FakeEndpoint(), []
    scores = make_client(fake, tmp_path).next_token_logprobs([PROMPTS[0]] * 3 + [PROMPTS[1]], [" Yes", " No"],
                                                             progress=done.append)
    assert fake.calls == 2 and scores.logits.shape == (4, 2) and sum(done) == 4
    assert (scores.usage.requests, scores.usage.cached) == (2, 2)


def test_plan_counts_the_prompts_not_yet_cached(tmp_path):
    fake = FakeEndpoint()
    make_client(fake, tmp_path).next_token_logprobs(PROMPTS[:2], [" Yes", " No"])
    plan = make_client(fake, tmp_path).plan(PROMPTS)
    chars = sum(len(p) for p in PROMPTS[2:])
    assert plan["requests"] == 4 and plan["cached"] == 2 and plan["prompt_chars"] == chars
    assert plan["approx_prompt_tokens"] == round(chars / 4) and "estimate" in plan["note"]
    assert fake.calls == 2


def test_requests_go_concurrency_at_a_time(tmp_path):
    fake = FakeEndpoint(delay=0.05)
    make_client(fake, tmp_path, concurrency=3).next_token_logprobs([f"p{i}" for i in range(12)], [" Yes", " No"])
    assert fake.calls == 12 and fake.max_in_flight == 3


# -- retries and errors ---------------------------------------------------------------------------------------

def test_a_rate_limit_is_retried(tmp_path):
    fake = FakeEndpoint(failures=[(429, {"error": {"message": "Rate limit reached"}})])
    scores = make_client(fake, tmp_path).next_token_logprobs(PROMPTS[:1], [" Yes", " No"])
    assert fake.calls == 2 and scores.usage.requests == 1
    np.testing.assert_allclose(scores.logits, [[-1.3, -0.4]], rtol=1e-6)


def test_a_server_error_after_the_retries_is_a_clear_error(tmp_path):
    fake = FakeEndpoint(failures=[(500, {"error": {"message": "the GPU caught fire"}})], forever=True)
    message = raised(fake, tmp_path, lambda c: c.next_token_logprobs(PROMPTS[:1], [" Yes"]), max_retries=2)
    assert fake.calls == 3
    assert message == (f"model 'davinci-002' at {LOCAL} answered HTTP 500 after 2 retries with backoff: "
                       f"the GPU caught fire")


def test_a_failed_call_keeps_what_was_answered(tmp_path):
    fake = FakeEndpoint(refused={PROMPTS[3]})
    message = raised(fake, tmp_path, lambda c: c.next_token_logprobs(PROMPTS, [" Yes"]), concurrency=1)
    assert message == f"model 'davinci-002' at {LOCAL} answered HTTP 400: cannot read {PROMPTS[3]!r}"
    assert fake.calls <= 5  # the queued requests were dropped (one may have started meanwhile)
    fake.refused.clear()
    again = make_client(fake, tmp_path).next_token_logprobs(PROMPTS, [" Yes"])
    assert again.usage.cached >= 3 and again.usage.cached + again.usage.requests == 6


def test_an_unreachable_endpoint_is_named(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    client = CompletionsClient(Endpoint("smollm2", url, max_retries=0, timeout_s=5), cache_dir=str(tmp_path))
    with pytest.raises(ModelError, match=f"cannot reach {re.escape(url)} \\(model 'smollm2'\\)"):
        client.verbalizer_tokens([" Yes"])


def test_a_wrong_key_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-wrong")
    fake = FakeEndpoint(failures=[(401, {"error": {"message": "Incorrect API key provided: sk-wrong"}})])
    message = raised(fake, tmp_path, lambda c: c.verbalizer_tokens([" Yes"]), api_key_env="MY_KEY")
    assert "refused the API key from $MY_KEY (HTTP 401: Incorrect API key provided" in message
    assert "set MY_KEY to a key valid" in message and fake.calls == 1  # a 401 is not retried


def test_a_missing_key_names_the_variable_unless_the_server_is_local(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ModelError, match="environment variable OPENAI_API_KEY, which is not set"):
        api_key(Endpoint("davinci-002", None))
    assert api_key(Endpoint("smollm2", "http://localhost:8080/v1")) == "none"


def test_an_unknown_model_is_named(tmp_path):
    fake = FakeEndpoint(failures=[(404, {"error": {"message": "The model `davinci-003` does not exist",
                                                   "code": "model_not_found"}})])
    message = raised(fake, tmp_path, lambda c: c.verbalizer_tokens([" Yes"]), name="davinci-003")
    assert message.startswith(f"model 'davinci-003' at {LOCAL}: the server does not know model 'davinci-003'")
    assert "The model `davinci-003` does not exist" in message


def test_an_endpoint_without_logprobs_is_a_clear_error(tmp_path):
    for call in (lambda c: c.verbalizer_tokens([" Yes"]), lambda c: c.next_token_logprobs(PROMPTS[:1], [" Yes"])):
        message = raised(FakeEndpoint(logprobs=False), tmp_path, call)
        assert "returned no log-probabilities" in message and "davinci-002" in message


# -- verbalizer check -----------------------------------------------------------------------------------------

def test_verbalizer_tokens_are_checked_with_one_echo_request_each(tmp_path):
    fake = FakeEndpoint()
    assert make_client(fake, tmp_path).verbalizer_tokens([" Yes", " No"]) == [" Yes", " No"]
    assert [b["prompt"] for b in fake.bodies] == ["answer: Yes", "answer: No"]
    assert all(b["echo"] and b["max_tokens"] == 1 for b in fake.bodies)


def test_a_split_verbalizer_names_its_pieces(tmp_path):
    message = raised(FakeEndpoint(), tmp_path, lambda c: c.verbalizer_tokens([" Yes", " Maybe"]))
    assert message == (f"verbalizer ' Maybe' is not exactly one token after 'answer:' for model 'davinci-002' at "
                       f"{LOCAL}: it becomes [' May', 'be']; choose a word that is a single token for this model")


def test_a_word_joined_to_the_anchor_is_not_a_token_of_its_own(tmp_path):
    message = raised(FakeEndpoint(), tmp_path, lambda c: c.verbalizer_tokens(["x"]))  # the toy has a token ":x"
    assert "it becomes [':x'] (the first joins the end of 'answer:')" in message


def test_two_words_of_one_token_are_refused(tmp_path):
    message = raised(FakeEndpoint(), tmp_path, lambda c: c.verbalizer_tokens([" Yes", " Yes"]))
    assert "verbalizer words ' Yes' and ' Yes' are the same token" in message


def test_without_echo_the_words_are_counted_through_usage(tmp_path):
    fake = FakeEndpoint(echo=False)
    assert make_client(fake, tmp_path).verbalizer_tokens([" Yes", " No"]) == [" Yes", " No"]
    # one refused echo per word, the anchor counted once (then cached), each word counted
    assert [(b["prompt"], b["echo"]) for b in fake.bodies] == [
        ("answer: Yes", True), ("answer: Yes", False), ("answer:", False), ("answer: No", True), ("answer: No", False)]
    message = raised(FakeEndpoint(echo=False), tmp_path, lambda c: c.verbalizer_tokens([" Maybe"]))
    assert "it becomes 2 tokens (this endpoint does not echo tokens" in message


# -- slow: llama.cpp's server with SmolLM2 ------------------------------------------------------------------------

def server_client(url: str, tmp_path, **endpoint) -> CompletionsClient:
    return CompletionsClient(Endpoint("smollm2", url, **endpoint), cache_dir=str(tmp_path / "cache"))


@pytest.mark.slow
def test_llama_server_verbalizer_check(llama_server, tmp_path):
    client = server_client(llama_server, tmp_path)
    assert client.verbalizer_tokens([" Yes", " No"]) == [" Yes", " No"]
    with pytest.raises(ModelError, match=r"verbalizer ' Xylophonically' is not exactly one token .* it becomes \["):
        client.verbalizer_tokens([" Xylophonically"])


@pytest.mark.slow
def test_llama_server_next_token_logprobs(llama_server, tmp_path):
    prompts = ["The cat sat on the mat. question: A cat is sitting. Yes or No? answer:",
               "Paris is in France. question: Paris is in Italy. Yes or No? answer:"]
    client = server_client(llama_server, tmp_path)
    scores = client.next_token_logprobs(prompts, client.verbalizer_tokens([" Yes", " No"]))
    assert scores.logits.shape == (2, 2) and np.isfinite(scores.logits).all() and (scores.logits < 0).all()
    assert scores.usage.requests == 2 and scores.usage.prompt_tokens > 20 and scores.usage.completion_tokens == 2


def icl_rte(data_dir: str, n: int, shots: int = 4):
    """What adaptbench's ICL scores on RTE: the prompt encoder, the k-shot sample, the eval examples."""
    from adaptbench.config.schema import PromptSpec
    from adaptbench.models.loading import load_model
    from adaptbench.prompts.prompt import PromptEncoder
    from adaptbench.sweep.inputs import resolve_prompt
    from adaptbench.data.sampling import few_shot_sample
    from adaptbench.data import eval_examples, get_task, train_pool

    task = get_task("rte")
    loaded = load_model("smollm2-135m")
    encoder = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    sample = few_shot_sample(train_pool(task, data_dir), shots, seed=0, n_labels=2)
    evals, _ = eval_examples(task.validation, data_dir, max_examples=n, seed=0)
    return loaded, encoder, sample, evals


def local_scores(loaded, encoder, sample, evals):
    """adaptbench's transformers path, as the ICL predictor runs it (the context's KV cache reused)."""
    from adaptbench.scoring.core import PrefixCache, score
    from adaptbench.models.interface import lm_parts

    parts = lm_parts(loaded.model)
    prefix, queries = encoder.icl_inputs(sample, evals)
    cache = PrefixCache.encode(parts, prefix)
    return score(parts, queries, encoder.label_token_ids, loaded.tokenizer.pad_token_id, prefix_ids=prefix,
                 prefix_cache=cache, batch_size=4)


@pytest.mark.slow
def test_llama_server_agrees_with_adaptbench_scoring(llama_server, data_dir, tmp_path):
    """4-shot RTE ICL on 100 validation examples: the server (Q4_1 weights, llama.cpp) and adaptbench's own
    scoring (the same weights de-quantised to float32, transformers) predict the same label almost always."""
    loaded, encoder, sample, evals = icl_rte(data_dir, 100)
    start = time.perf_counter()
    local = local_scores(loaded, encoder, sample, evals)
    local_s = time.perf_counter() - start

    client = server_client(llama_server, tmp_path, concurrency=2)
    context = encoder.context_text(sample)
    prompts = [context + encoder.prompt.query(ex) for ex in evals]
    start = time.perf_counter()
    remote = client.next_token_logprobs(prompts, client.verbalizer_tokens(list(encoder.prompt.verbalizer)))
    remote_s = time.perf_counter() - start

    agree = float(np.mean(remote.predictions == local.predictions))
    both = ~remote.missing.any(axis=1)
    diff = np.abs(remote.logits[both] - local.vocab_logprobs[both])
    margin = np.corrcoef(remote.logits[:, 0] - remote.logits[:, 1], local.logits[:, 0] - local.logits[:, 1])[0, 1]
    print(f"\nagreement {agree:.3f} on {len(evals)} examples; local predicts label 1 for "
          f"{int(local.predictions.sum())}, server for {int(remote.predictions.sum())}; rows with a missing token "
          f"{int((~both).sum())}; |delta log p| mean {diff.mean():.3f} max {diff.max():.3f}; margin correlation "
          f"{margin:.3f}\nthroughput: server {len(evals) / remote_s:.1f} examples/s ({remote_s:.1f} s), "
          f"transformers {len(evals) / local_s:.1f} examples/s ({local_s:.1f} s)")
    assert agree >= 0.9
    assert remote.usage.requests == len(evals)
