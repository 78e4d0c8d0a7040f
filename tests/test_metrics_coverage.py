"""Numbers that cover less than they say: eval sets with nothing scored, and costs of evaluation points
measured apart from the training they interrupt."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from adaptbench.store import records
from adaptbench.measure.costs import CostTracker
from adaptbench.measure.metrics import eval_set_metrics
from adaptbench.data import EVAL_SETS, Example


def _examples(labels, meta=()) -> list[Example]:
    return [Example(f"text {i}", None, y, i, meta) for i, y in enumerate(labels)]


@pytest.mark.parametrize("name,metrics", [("cola-ood", ("accuracy", "mcc")), ("paws-qqp", ("accuracy", "f1")),
                                          ("hans", ("accuracy",))])
def test_nothing_scored_gives_no_number_and_no_crash(name, metrics):
    """sklearn raises on empty input and a NaN accuracy cannot be written: metrics are None, n is 0."""
    examples = _examples([0, 1, 1], (("heuristic", "lexical_overlap"),))
    result = eval_set_metrics(EVAL_SETS[name], examples, np.array([-1, -1, -1]))
    assert result == {"all": {"n": 0, **{m: None for m in metrics}, "n_unscored": 3}}
    records.dumps(result)  # refuses NaN


def test_partly_scored_counts_the_rest():
    examples = _examples([0, 1, 1, 0])
    result = eval_set_metrics(EVAL_SETS["cola-ood"], examples, np.array([0, 1, -1, 1]))
    assert result["all"]["n"] == 3 and result["all"]["n_unscored"] == 1
    assert result["all"]["accuracy"] == pytest.approx(2 / 3) and result["all"]["mcc"] is not None
    assert result["label=acceptable"]["n"] == 1


def test_interval_time_is_taken_out_of_its_phase():
    costs = CostTracker()
    with costs.phase("train") as phase:
        start = time.perf_counter()  # the phase's clock starts once its peak-memory counters are reset
        time.sleep(0.2)
        for seconds in (0.3, 0.1):
            with costs.interval("eval_points") as part:
                time.sleep(seconds)
                part.tokens = 5
    wall = time.perf_counter() - start
    got = costs.to_dict()
    assert list(got) == ["train", "eval_points"] and phase.name == "train"
    train, evals = got["train"], got["eval_points"]
    assert evals["seconds"] == pytest.approx(0.4, abs=0.05) and evals["extra"]["count"] == 2 and evals["tokens"] == 10
    assert train["seconds"] == pytest.approx(0.2, abs=0.1)
    assert train["seconds"] + evals["seconds"] == pytest.approx(wall, abs=0.02)
    assert train["extra"]["excluded_seconds"] == {"eval_points": pytest.approx(evals["seconds"], abs=0.001)}


def test_interval_peak_memory_is_its_own():
    costs = CostTracker()
    with costs.phase("train"):
        with costs.interval("eval_points"):
            big = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
            del big
    got = costs.to_dict()
    if got["train"]["peak_rss_scope"] != "phase":
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    assert got["eval_points"]["peak_memory_bytes"] > got["train"]["peak_memory_bytes"] + 150 * 2**20


def test_interval_outside_a_phase_is_a_phase():
    costs = CostTracker()
    with costs.interval("eval_points") as part:
        part.tokens = 3
    assert costs.to_dict()["eval_points"]["tokens"] == 3



FREEZE_CHECK = """
import gc, weakref
import torch  # its objects are what the freeze keeps out of later collections
from adaptbench.measure.costs import CostTracker

class Node:  # a reference cycle: only the collector frees it
    def __init__(self):
        self.me = self

gc.disable()  # no automatic collection: only the phases'
before = weakref.ref(Node())
with CostTracker().phase("first"):
    assert before() is None, "garbage from before the first phase survived it"
assert gc.get_freeze_count() > 100_000, gc.get_freeze_count()
after = weakref.ref(Node())
with CostTracker().phase("next"):
    assert after() is None, "garbage from between the phases survived the next one"
"""


def test_a_phase_collects_garbage_but_walks_the_imports_once():
    """Each phase starts with a full collection (a phase's peak must not count an earlier phase's garbage);
    what is alive after the process' first one -- torch's and transformers' objects, ~400,000 -- is frozen, so
    it is not walked again at every phase (0.27 s each before).  In a fresh process: the first phase's."""
    done = subprocess.run([sys.executable, "-c", FREEZE_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
