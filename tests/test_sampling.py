"""Few-shot samples: k examples, balanced, shuffled, and a different sample for every data seed."""

from __future__ import annotations

from collections import Counter

import pytest

from adaptbench.errors import DataError
from adaptbench.data.sampling import few_shot_sample, largest_fitting_sample, unlabeled_sample
from adaptbench.data import get_task, train_pool


@pytest.fixture(scope="module")
def rte_pool(data_dir):
    return train_pool(get_task("rte"), data_dir)


def test_balanced_and_deterministic(rte_pool):
    s = few_shot_sample(rte_pool, 16, seed=3, n_labels=2)
    assert len(s) == 16 and Counter(e.label for e in s) == {0: 8, 1: 8}
    assert len({e.idx for e in s}) == 16
    assert [e.idx for e in few_shot_sample(rte_pool, 16, seed=3, n_labels=2)] == [e.idx for e in s]


def test_every_seed_gets_its_own_sample(rte_pool):
    """The failure this guards against: every data seed silently reusing one sample."""
    samples = [frozenset(e.idx for e in few_shot_sample(rte_pool, 16, seed, 2)) for seed in range(10)]
    assert len(set(samples)) == 10
    overlap = max(len(a & b) for i, a in enumerate(samples) for b in samples[i + 1:])
    assert overlap < 8  # independent draws from ~1,245 per label hardly overlap


def test_shuffled_not_grouped_by_label(rte_pool):
    grouped = 0
    for seed in range(10):
        labels = [e.label for e in few_shot_sample(rte_pool, 16, seed, 2)]
        grouped += labels in ([0] * 8 + [1] * 8, [1] * 8 + [0] * 8)
    assert grouped == 0


def test_uneven_k_and_unbalanced(rte_pool):
    s = few_shot_sample(rte_pool, 5, seed=0, n_labels=2)
    assert sorted(Counter(e.label for e in s).values()) == [2, 3]
    u = few_shot_sample(rte_pool, 32, seed=0, n_labels=2, balanced=False)
    assert len(u) == 32 and len({e.idx for e in u}) == 32
    assert few_shot_sample(rte_pool, 0, seed=0, n_labels=2) == []


def test_too_few_examples(rte_pool):
    only_zero = [e for e in rte_pool if e.label == 0][:5]
    with pytest.raises(DataError, match="needs 2 examples of label 1, the train pool has 0"):
        few_shot_sample(only_zero, 4, seed=0, n_labels=2)
    with pytest.raises(DataError, match="shots=10 but the train pool has only 5"):
        few_shot_sample(only_zero, 10, seed=0, n_labels=2)


def test_unlabeled_sample_excludes_context(rte_pool):
    ctx = few_shot_sample(rte_pool, 16, seed=0, n_labels=2)
    extra = unlabeled_sample(rte_pool, 64, seed=0, exclude=ctx)
    assert len(extra) == 64 and not {e.idx for e in extra} & {e.idx for e in ctx}


def test_largest_fitting_sample_is_the_last_k_that_fits(rte_pool):
    budget = 2000  # characters of the sample's premises
    fits = lambda s: sum(len(ex.text1) for ex in s) <= budget  # noqa: E731
    sample = largest_fitting_sample(rte_pool, 3, 2, fits)
    k = len(sample)
    assert k >= 2 and k % 2 == 0 and fits(sample)
    assert sample == few_shot_sample(rte_pool, k, 3, 2)  # the seeded balanced sample of that size
    assert not fits(few_shot_sample(rte_pool, k + 2, 3, 2))  # and the next size does not fit
    assert largest_fitting_sample(rte_pool, 3, 2, lambda s: False) == []
    assert len(largest_fitting_sample(rte_pool, 0, 2, lambda s: len(s) <= 7)) == 6
