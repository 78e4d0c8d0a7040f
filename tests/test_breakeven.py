"""Cost-curve arithmetic on hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adaptbench.measure.breakeven import DISTILLED, ICL, ICL_CACHED, PathCost, break_even, cost_curve_table, cumulative_seconds

GiB = 2**30
# a 2,000-token context: re-encoding costs 0.5 s per query, the cached prefix 2 s once and then 0.1 s
# per query, the distilled student 60 s of teacher pass + training and then 0.05 s per query
ICL_COST = PathCost(ICL, 0.0, 0.5, 2 * GiB)
CACHED_COST = PathCost(ICL_CACHED, 2.0, 0.1, 3 * GiB)
DISTILLED_COST = PathCost(DISTILLED, 60.0, 0.05, 1 * GiB)


def test_cumulative_seconds():
    assert cumulative_seconds(ICL_COST, 10) == 5.0
    assert cumulative_seconds(CACHED_COST, 10) == 3.0
    assert cumulative_seconds(DISTILLED_COST, 0) == 60.0
    assert np.allclose(cumulative_seconds(DISTILLED_COST, np.array([0, 100, 1000])), [60.0, 65.0, 110.0])


def test_break_even_hand_computed():
    assert break_even(ICL_COST, CACHED_COST) == pytest.approx(2.0 / 0.4)        # 5 queries
    assert break_even(ICL_COST, DISTILLED_COST) == pytest.approx(60.0 / 0.45)   # 133.3 queries
    assert break_even(CACHED_COST, DISTILLED_COST) == pytest.approx(58.0 / 0.05)  # 1,160 queries
    n = break_even(CACHED_COST, DISTILLED_COST)
    assert cumulative_seconds(CACHED_COST, n) == pytest.approx(cumulative_seconds(DISTILLED_COST, n))
    assert cumulative_seconds(DISTILLED_COST, n + 1) < cumulative_seconds(CACHED_COST, n + 1)
    assert cumulative_seconds(DISTILLED_COST, n - 1) > cumulative_seconds(CACHED_COST, n - 1)
    m = break_even(ICL_COST, DISTILLED_COST)  # not whole: the 134th query is the first one cheaper
    assert cumulative_seconds(DISTILLED_COST, math.ceil(m)) < cumulative_seconds(ICL_COST, math.ceil(m))
    assert cumulative_seconds(DISTILLED_COST, math.floor(m)) > cumulative_seconds(ICL_COST, math.floor(m))


def test_break_even_never_and_from_the_start():
    assert break_even(DISTILLED_COST, CACHED_COST) is None  # dearer per query: never in the end
    assert break_even(CACHED_COST, PathCost("same slope", 5.0, 0.1, 0)) is None
    assert break_even(CACHED_COST, PathCost("same slope, less setup", 1.0, 0.1, 0)) == 0.0
    assert break_even(CACHED_COST, PathCost("cheaper in every way", 1.0, 0.01, 0)) == 0.0
    assert break_even(ICL_COST, ICL_COST) == 0.0


@pytest.mark.parametrize("field, value", [("setup_seconds", -1.0), ("per_query_seconds", float("nan")),
                                          ("peak_memory_bytes", -5)])
def test_path_cost_rejects_impossible_measurements(field, value):
    kwargs = {"setup_seconds": 1.0, "per_query_seconds": 1.0, "peak_memory_bytes": 1, field: value}
    with pytest.raises(ValueError, match=field):
        PathCost("x", **kwargs)


def test_cost_curve_table():
    long_icl = PathCost(ICL, 0.0, 2.0, 6 * GiB)  # 8,000 tokens: re-encoding dominates
    long_cached = PathCost(ICL_CACHED, 8.0, 0.4, 7 * GiB)
    long_distilled = PathCost(DISTILLED, 100.0, 0.05, 1 * GiB)
    rows = [(2000, {c.name: c for c in (ICL_COST, CACHED_COST, DISTILLED_COST)}),
            (8000, {c.name: c for c in (long_icl, long_cached, long_distilled)})]
    table = cost_curve_table(rows)
    assert list(table.columns) == ["context_tokens", "path", "setup_seconds", "per_query_seconds",
                                   "peak_memory_bytes", "break_even_vs_icl", "break_even_vs_icl_cached"]
    assert list(zip(table.context_tokens, table.path)) == [
        (2000, ICL), (2000, ICL_CACHED), (2000, DISTILLED), (8000, ICL), (8000, ICL_CACHED), (8000, DISTILLED)]
    by = table.set_index(["context_tokens", "path"])
    assert by.loc[(2000, DISTILLED), "break_even_vs_icl"] == pytest.approx(60 / 0.45)
    assert by.loc[(2000, DISTILLED), "break_even_vs_icl_cached"] == pytest.approx(1160.0)
    assert by.loc[(8000, DISTILLED), "break_even_vs_icl"] == pytest.approx(100 / 1.95)
    assert by.loc[(8000, DISTILLED), "break_even_vs_icl_cached"] == pytest.approx(92 / 0.35)
    assert by.loc[(8000, ICL_CACHED), "break_even_vs_icl"] == pytest.approx(8 / 1.6)
    assert by.loc[(8000, DISTILLED), "peak_memory_bytes"] == GiB
    assert by.loc[(2000, ICL), "break_even_vs_icl_cached"] == math.inf  # re-encoding never wins in the end
    assert math.isnan(by.loc[(2000, ICL), "break_even_vs_icl"])          # a path against itself: n/a


def test_cost_curve_table_with_a_missing_baseline_and_a_mislabelled_path():
    table = cost_curve_table([(500, {ICL: ICL_COST, DISTILLED: DISTILLED_COST})])
    assert math.isnan(table.loc[1, "break_even_vs_icl_cached"])
    assert table.loc[1, "break_even_vs_icl"] == pytest.approx(60 / 0.45)
    with pytest.raises(ValueError, match="path key 'icl' holds the cost of 'distilled'"):
        cost_curve_table([(500, {ICL: DISTILLED_COST})])
