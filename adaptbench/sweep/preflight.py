"""Before any model loads: every run's data, models, verbalizers and endpoints are checked, so bad input
stops a sweep at once with a clear message instead of failing every run.
"""

from __future__ import annotations

import warnings

from .._util.files import dumps
from ..config.schema import RunSpec
from ..config.settings import ModelSpec
from ..data.sampling import few_shot_sample
from ..errors import AdaptbenchError, ModelError, Notice, PromptError
from ..methods import METHODS
from ..models.loading import check_findable, load_tokenizer
from ..prompts.prompt import PromptEncoder
from ..scoring.api import client
from .inputs import RunInputs, load_inputs
from .plan import Plan


def _inputs_key(run: RunSpec) -> str:
    """Runs with equal task, prompt and eval settings read the same data."""
    return dumps(run.model_dump(mode="json", include={"task", "prompt", "eval"}))


def run_inputs(plan: Plan, runs: list[RunSpec]) -> dict[str, RunInputs]:
    """Each run's data, read once per distinct task/prompt/eval settings."""
    by_key: dict[str, RunInputs] = {}
    out = {}
    for run in runs:
        key = _inputs_key(run)
        if key not in by_key:
            by_key[key] = load_inputs(run, plan.runtime, plan.config_dir)
        out[run.run_id] = by_key[key]
    return out


def preflight(plan: Plan, runs: list[RunSpec]) -> dict[str, RunInputs]:
    """Load and validate every run's data before any model is loaded (bad input fails the sweep now)."""
    for run in runs:
        METHODS[run.method].preflight(run, plan.config_dir)
    out = run_inputs(plan, runs)
    check_models(runs)
    check_verbalizers(runs, out)
    check_endpoints(runs, out, plan.runtime)
    return out


def _models(run: RunSpec):
    return METHODS[run.method].models(run)


def check_models(runs: list[RunSpec]) -> None:
    """Every model (and teacher) can be found -- a typo stops the sweep once, with a suggestion, instead of
    failing every run after a minute of hub retries each; a model given trust_remote_code is named."""
    seen = set()
    for run in runs:
        for spec in (s for s in _models(run) if s not in seen):
            seen.add(spec)
            check_findable(spec)
            if spec.trust_remote_code:
                warnings.warn(f"model {spec.name!r} has trust_remote_code: true -- Python code from its folder or hub "
                              f"repository will run on this machine with your permissions; set it only for code "
                              f"you trust", Notice, stacklevel=1)


def check_verbalizers(runs: list[RunSpec], inputs: dict[str, RunInputs]) -> None:
    """Each verbalizer word one token of its model's tokenizer, no two words one token: checked with the
    tokenizers alone, so a bad verbalizer stops the sweep before any model loads (a tokenizer that cannot
    be loaded is left to the run, which fails with the reason)."""
    tokenizers: dict = {}
    for run in runs:
        prompt, labels = inputs[run.run_id].prompt, inputs[run.run_id].task.labels.names
        for spec in [s for s in _models(run) if s.api is None]:
            key = (spec.name, spec.gguf_file, spec.tokenizer, spec.revision)
            if key not in tokenizers:
                try:
                    tokenizers[key] = load_tokenizer(spec)
                except AdaptbenchError:
                    tokenizers[key] = None
            if tokenizers[key] is not None:
                try:
                    PromptEncoder(tokenizers[key], prompt, labels)
                except PromptError as e:
                    raise PromptError(f"prompt.verbalizer for model {spec.name!r}: {e}") from None


def api_models(run: RunSpec) -> list[ModelSpec]:
    """The models behind an API a run reads: its model, or its teacher."""
    return [s for s in _models(run) if s.api is not None]


def check_endpoints(runs: list[RunSpec], inputs: dict[str, RunInputs], runtime) -> None:
    """Before a sweep spends money: each endpoint is reachable with the key, knows the model, returns
    log-probabilities and has each verbalizer word as one token (a clear ModelError otherwise)."""
    seen = set()
    for run in runs:
        words = tuple(inputs[run.run_id].prompt.verbalizer)
        for spec in api_models(run):
            if (spec, words) not in seen:
                seen.add((spec, words))
                client(spec, runtime).verbalizer_tokens(list(words))


def api_requests(plan: Plan, runs: list[RunSpec]) -> list[tuple[RunSpec, ModelSpec, dict]]:
    """For ``--dry-run``: per run that calls an api model, that model and the requests the run would send (those
    not in the response cache) with about how many prompt tokens -- nothing is sent."""
    calling = [run for run in runs if api_models(run)]
    inputs = run_inputs(plan, calling)
    out = []
    for run in calling:
        spec, data = api_models(run)[0], inputs[run.run_id]
        sample = few_shot_sample(data.pool, run.shots, run.data_seed, len(data.task.labels.names), run.balanced)
        texts = METHODS[run.method].api_prompts(run, data.prompt, sample, data.evals)
        try:
            out.append((run, spec, client(spec, plan.runtime).plan(texts)))
        except ModelError as e:
            out.append((run, spec, {"error": str(e)}))
    return out
