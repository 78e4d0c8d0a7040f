"""Serving many users (issue 27, item 4): per-user caches answered in one batch, memory per user measured, and
the users a memory budget holds (the arms' run measures serving too: tests/test_arms.py)."""

from __future__ import annotations

import pytest
import torch

from adaptbench.errors import ConfigError
from adaptbench.measure.serving import users_within
from adaptbench.methods.cd.serving import check_budget
from adaptbench.models.interface import lm_parts
from adaptbench.scoring.core import PrefixCache, sequence_hidden
from adaptbench.scoring.kv_press import quantize
from adaptbench.scoring.user_caches import UserCaches, copy_cache

from .test_cost_curve import _config, _files
from .test_run import _records, _run


def _model(tiny_models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_models["llama"]).eval()


@pytest.mark.parametrize("bits", [None, 4])
def test_each_row_of_a_users_batch_reads_after_its_own_users_cache(tiny_models, bits):
    parts = lm_parts(_model(tiny_models))
    users = [[5, 9, 11, 40, 7, 3], [60, 2, 8, 8, 31, 12], [17, 17, 90, 4, 6, 22]]  # contexts of one length
    caches = [PrefixCache.encode(parts, ids, shared=False) for ids in users]
    if bits:
        caches = [quantize(c, bits, group_size=16) for c in caches]
    queries = [[21, 22, 23], [30, 31], [44, 45, 46]]
    with torch.inference_mode():
        together = sequence_hidden(parts, queries, 0, UserCaches(caches))
        alone = [sequence_hidden(parts, [q], 0, c)[0] for q, c in zip(queries, caches)]
    for t, a in zip(together, alone):
        assert torch.allclose(t, a, atol=1e-5)
    assert not torch.allclose(together[0], sequence_hidden(parts, [queries[0]], 0, caches[1])[0], atol=1e-3)
    assert UserCaches(caches).nbytes == sum(c.nbytes for c in caches)
    copied = copy_cache(caches[0])
    assert type(copied) is type(caches[0]) and copied.nbytes == caches[0].nbytes
    assert type(copied.layers[0][0]) is type(caches[0].layers[0][0])
    assert torch.equal(copied.dense_layers()[1][1], caches[0].dense_layers()[1][1])
    if bits is None:  # new storage: zeroing the copy leaves the original
        copied.layers[0][0].zero_()
        assert caches[0].layers[0][0].abs().sum() > 0
    with pytest.raises(ValueError, match="different lengths"):
        UserCaches([caches[0], PrefixCache.encode(parts, [1, 2, 3], shared=False)])


def _measured(per_user, transients, shared=0, base=1000, replaces=0):
    return {"resident_before_bytes": base, "shared_bytes_measured": shared, "per_user_bytes_measured": per_user,
            "replaces_model_bytes": replaces,
            "batch": {str(b): {"transient_bytes": t, "queries_per_second": 10.0 * b} for b, t in transients.items()}}


def test_the_users_a_budget_holds_are_counted_by_hand():
    # 1000 resident, 100 per user; batch 16's transient (500) fits: (10000 - 1000 - 500) // 100 = 85 users
    assert users_within(10000, _measured(100, {1: 10, 4: 50, 16: 500})) == {
        "users": 85, "batch": 16, "queries_per_second": 160.0}
    # batch 16 does not fit (1000 + 1600 + 8000 > 10000): at batch 4, (10000 - 1000 - 50) // 100 = 89
    assert users_within(10000, _measured(100, {1: 10, 4: 50, 16: 8000})) == {
        "users": 89, "batch": 4, "queries_per_second": 40.0}
    # nothing per user: no limit on users, the largest batch that fits sets the throughput
    assert users_within(10000, _measured(0, {1: 10, 16: 500}, shared=4000)) == {
        "users": None, "batch": 16, "queries_per_second": 160.0}
    assert users_within(1200, _measured(300, {1: 10})) == {"users": 0, "batch": None, "queries_per_second": None}
    # a merged model held instead of the base model: the base's bytes are not counted
    assert users_within(10000, _measured(3000, {1: 10}, base=3500, replaces=3000))["users"] == 3


def test_a_memory_budget_below_the_model_is_refused(tiny_models):
    model = _model(tiny_models)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    with pytest.raises(ConfigError, match="memory_budget.*smaller than the model"):
        check_budget(size // 2, model)
    check_budget(size * 4, model)


def test_serving_needs_the_query_costs_queries(tmp_path, data_dir, tiny_models):
    _files(tmp_path)
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], "serving: {batch_sizes: [1]}"))
    assert result.exit_code != 0 and "cd.serving" in result.output and "query_costs" in result.output


@pytest.mark.slow
def test_a_cartridge_student_is_served_as_a_cache(tmp_path, data_dir, tiny_models):
    _files(tmp_path)
    config = _config(tiny_models["llama"], "query_costs: 2, context_tokens: 48, serving: {batch_sizes: [2], repeats: 1}")
    config = config.replace("trainable: lora", "trainable: cartridge\ncartridge: {num_virtual_tokens: 8}")
    result = _run(tmp_path, data_dir, config)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    paths = rec["method_info"]["serving"]["paths"]
    assert set(paths) == {"icl_cached", "distilled:cartridge"}
    cart, icl = paths["distilled:cartridge"]["per_user"], paths["icl_cached"]["per_user"]
    assert cart["per_user_bytes_shapes"] * 48 / 8 == pytest.approx(icl["per_user_bytes_shapes"], rel=0.1)


def test_a_run_whose_memory_budget_cannot_hold_the_model_stops_before_its_work(tmp_path, data_dir, tiny_models):
    _files(tmp_path)
    result = _run(tmp_path, data_dir, _config(tiny_models["llama"], "query_costs: 2, serving: {memory_budget: 1KiB}"))
    text = result.output + "".join(str(r.get("reason")) for r in _records(tmp_path))
    assert "cd.serving.memory_budget: 1,024 bytes is smaller than the model" in " ".join(text.split())
