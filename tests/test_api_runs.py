"""Api models in sweeps: ICL through a completions endpoint, CD with an api teacher and a local student, the
response cache across reruns, the dry-run, and bad endpoints stopping a sweep before it spends money.

The endpoint is the fake of ``test_api_models`` behind the official client (an httpx mock transport); the
real server (llama.cpp) is in ``test_api_models``' slow tests."""

from __future__ import annotations

import json

import httpx
import pytest

from adaptbench.scoring import api as api_runs
from adaptbench.scoring.api_client import CompletionsClient

from .test_api_models import FakeEndpoint
from .test_run import _records, _run

API_ICL = """# adaptbench run sweep.yaml
name: t
model: {{api: openai-completions, name: davinci-002, base_url: "http://127.0.0.1:9/v1"}}
task: rte
method: icl
shots: 4
data_seeds: {seeds}
eval: {{max_examples: 5}}
runtime: {{progress: false, api: {{cache_dir: "{cache}", price_per_1k_prompt: 0.5, price_per_1k_completion: 1.5}}}}
"""


@pytest.fixture
def endpoint(monkeypatch):
    """The fake endpoint every api client of the sweep talks to."""
    fake = FakeEndpoint()

    def client(point, cache_dir):
        return CompletionsClient(point, cache_dir=cache_dir, http_client=httpx.Client(transport=httpx.MockTransport(fake)))

    monkeypatch.setattr(api_runs, "_client", client)
    return fake


def _scoring_calls(fake: FakeEndpoint) -> int:
    return sum(1 for b in fake.bodies if not b.get("echo"))


def test_icl_through_an_endpoint_is_recorded_and_never_paid_twice(tmp_path, data_dir, endpoint):
    text = API_ICL.format(seeds=1, cache=tmp_path / "api")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok" and rec["model"]["source"] == "api:http://127.0.0.1:9/v1/davinci-002"
    n = sum(s["n"] for s in rec["eval_sets"].values())
    usage = rec["method_info"]["api_usage"]
    assert usage["requests"] == n == _scoring_calls(endpoint) and usage["cached"] == 0
    assert usage["completion_tokens"] == n
    assert usage["cost"] == pytest.approx((usage["prompt_tokens"] * 0.5 + n * 1.5) / 1000)
    assert rec["prompt"]["label_tokens"] == [" Yes", " No"] and rec["method_info"]["prefix_cache"] is False
    folder = tmp_path / "results" / "t" / "runs" / rec["run_id"]
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    # the endpoint's top log-probabilities are the full distribution's: " Yes" -1.3, " No" -0.4
    assert {tuple(r["vocab_logprobs"]) for r in rows} == {(-1.3, -0.4)} and {r["pred"] for r in rows} == {1}

    again = _run(tmp_path, data_dir, text, "--force")  # a rerun: every response from the disk cache
    assert again.exit_code == 0, again.output
    assert _scoring_calls(endpoint) == n
    [rec2] = _records(tmp_path)
    assert rec2["method_info"]["api_usage"]["requests"] == 0 and rec2["method_info"]["api_usage"]["cached"] == n
    assert rec2["metrics"] == rec["metrics"]


def test_dry_run_counts_requests_and_sends_none(tmp_path, data_dir, endpoint):
    text = API_ICL.format(seeds=2, cache=tmp_path / "api")
    result = _run(tmp_path, data_dir, text, "--dry-run")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "api: 20 requests and ~" in out and "nothing was sent" in out  # 2 runs x (5 rte + 5 hans)
    assert endpoint.calls == 0


@pytest.mark.parametrize("status,words", [(401, "OPENAI_API_KEY"), (404, "davinci-002")])
def test_a_bad_endpoint_stops_the_sweep_before_any_run(tmp_path, data_dir, monkeypatch, status, words):
    fake = FakeEndpoint(failures=[(status, {"error": {"message": "no"}})], forever=True)
    monkeypatch.setattr(api_runs, "_client", lambda point, cache_dir: CompletionsClient(
        point, cache_dir=cache_dir, http_client=httpx.Client(transport=httpx.MockTransport(fake))))
    result = _run(tmp_path, data_dir, API_ICL.format(seeds=1, cache=tmp_path / "api"))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert words in " ".join(result.output.split())
    assert not list((tmp_path / "results").rglob("result.json"))


def test_fine_tuning_an_api_model_is_refused(tmp_path, data_dir):
    text = API_ICL.format(seeds=1, cache=tmp_path / "api").replace("method: icl", "method: pbft")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 2 and "cannot run method 'pbft', which trains local weights" in result.output


CD_API_TEACHER = """# adaptbench run sweep.yaml
name: t
model: {student}
task: rte
method: cd
trainable: full
shots: 4
data_seeds: [0]
train: {{max_steps: 3, batch_size: 4, lr: 1.0e-3, warmup_ratio: 0.0, schedule: constant}}
cd:
  teacher: {{api: openai-completions, name: davinci-002, base_url: "http://127.0.0.1:9/v1"}}
  target: {target}
  unlabeled: 4
  teacher_eval: true
eval: {{max_examples: 5}}
runtime: {{progress: false, api: {{cache_dir: "{cache}"}}}}
"""


def test_cd_distils_an_api_teacher_into_a_local_student(tmp_path, data_dir, tiny_models, endpoint):
    text = CD_API_TEACHER.format(student=tiny_models["llama"], target="labels", cache=tmp_path / "api")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["teacher"] == "api:http://127.0.0.1:9/v1/davinci-002" and info["leave_one_out"] is True
    # the teacher scored the 4 labelled inputs (leave-one-out contexts) and 4 unlabelled ones, and the eval sets
    assert info["api_usage"]["requests"] == 8 + sum(s["n"] for s in rec["eval_sets"].values())
    prompts = [b["prompt"] for b in endpoint.bodies if not b.get("echo")]
    assert len(set(prompts)) == len(prompts)  # leave-one-out contexts: no input read with itself, none twice
    assert set(info["teacher_metrics"]) == set(rec["eval_sets"])

    refused = _run(tmp_path, data_dir, CD_API_TEACHER.format(student=tiny_models["llama"], target="vocab",
                                                             cache=tmp_path / "api"))
    assert refused.exit_code == 2 and "an api teacher gives its top 5 log-probabilities" in refused.output


class FailsWhenScoring(FakeEndpoint):
    """Answers the pre-sweep check (echo requests), then fails every scoring request with a 503."""

    def answer(self, body: dict) -> httpx.Response:
        if body.get("echo"):
            return super().answer(body)
        return httpx.Response(503, json={"error": {"message": "overloaded"}}, headers={"retry-after-ms": "1"})


def test_an_endpoint_failing_mid_sweep_fails_the_run_with_the_reason(tmp_path, data_dir, monkeypatch):
    fake = FailsWhenScoring()
    monkeypatch.setattr(api_runs, "_client", lambda point, cache_dir: CompletionsClient(
        point, cache_dir=cache_dir, http_client=httpx.Client(transport=httpx.MockTransport(fake))))
    text = API_ICL.format(seeds=1, cache=tmp_path / "api").replace("cache_dir:", "max_retries: 1, cache_dir:")
    result = _run(tmp_path, data_dir, text)
    assert result.exit_code == 1 and "Traceback" not in result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "failed" and "503" in rec["reason"] and "traceback" not in rec
