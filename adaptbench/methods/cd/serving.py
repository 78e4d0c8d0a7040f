"""``cd.serving``: the ways a distillation run can serve a long context to many users, measured after
training (:mod:`adaptbench.measure.serving` times them).

Measured where the student is a LoRA adapter or a cartridge on the teacher's own model, so the base model
(adapters off, or without the cartridge) and the student are both resident:

- ``icl_cached``: the context's KV cache (shared: one, which a batch's queries attend to together where
  the model allows it; per user: one per user -- copies of the run's context stand for each user's own of
  this length, the same bytes);
- each ``kv_compressed`` arm: its compressed (or quantized) cache, one per user the same way;
- ``distilled:cartridge``: the trained KV prefix (per user: a copy each);
- ``distilled:lora``: the adapter, unmerged -- per user one adapter each (a copy loaded through PEFT), rows of
  a batch each through their user's adapter (PEFT's mixed-adapter batches); and ``distilled:lora_merged``: the
  adapter merged into a copy of the model -- per user a model each, so their queries cannot share a forward.

Every path answers the same queries (the run's ``cd.query_costs`` queries, cycled to the batch size).
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch

from ...errors import ConfigError
from ...measure.breakeven import ICL_CACHED
from ...measure.serving import PER_USER, SHARED, ServingPath, measure_serving, users_within
from ...models.capabilities import shared_prefix_unsupported
from ...models.cartridge import is_cartridge
from ...models.interface import lm_parts
from ...scoring.core import PrefixCache
from ...scoring.user_caches import UserCaches, copy_cache
from .arms import CacheArm
from .query_costs import answer_batch

CARTRIDGE, LORA, LORA_MERGED = "distilled:cartridge", "distilled:lora", "distilled:lora_merged"


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of a model's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def check_budget(budget: int | None, model: torch.nn.Module) -> None:
    """A memory budget must hold the model itself (checked before the run's work starts)."""
    weights = model_bytes(model) if budget is not None else 0
    if budget is not None and budget <= weights:
        raise ConfigError(f"cd.serving.memory_budget: {budget:,} bytes is smaller than the model itself "
                          f"({weights:,} bytes of weights): no user fits; raise it")


def _reused(build):
    """Per user: the first user's state built, every further user's a copy of it (new storage, the same
    bytes as building their own context's of this length; :func:`.measure_serving` measures the copies)."""
    first = []

    def state():
        if not first:
            first.append(build())
            return first[0]
        return copy_cache(first[0])
    return state


def _cache_paths(name: str, parts, pad: int, build, reads, view=nullcontext) -> list[ServingPath]:
    """A cache-backed way to serve, in both regimes: ``build(shared)`` makes a cache (``shared``: attended to
    once by a whole batch where the model allows it; None: wherever it does), ``reads(query)`` the ids a query
    reads after it."""

    def reading(queries):
        return [reads(q) for q in queries], [q.n for q in queries]

    def per_user(states, queries):
        with view():
            answer_batch(parts, *reading(queries), pad, UserCaches(states))

    def shared(states, queries):
        with view():
            answer_batch(parts, *reading(queries), pad, states[0])

    def built(shared_attention):
        with view():
            return build(shared_attention)

    return [ServingPath(name, SHARED, lambda: built(None), shared, lambda c: c.nbytes),
            ServingPath(name, PER_USER, _reused(lambda: built(False)), per_user, lambda c: c.nbytes)]


def _student_reads(q, start: list[int]) -> list[int]:
    return list(start) + list(q.own)


def _cartridge_paths(lm, pad: int, start: list[int]) -> list[ServingPath]:
    """The cartridge as a cache in front of the base model's reading of the query alone."""
    base = lm_parts(lm.get_base_model())
    p = lm.active_peft_config.num_virtual_tokens

    def build(shared):
        with torch.no_grad():
            prompt = lm.get_prompt(batch_size=1)
            layers = [(layer.keys.detach().clone(), layer.values.detach().clone()) for layer in prompt.layers]
        if shared is None:
            shared = shared_prefix_unsupported(base.backbone.config) is None
        return PrefixCache(layers, p, shared=shared)

    return _cache_paths(CARTRIDGE, base, pad, build, lambda q: _student_reads(q, start))


class _Adapters:
    """Copies of the trained LoRA adapter loaded under new names (one per user, or one shared)."""

    def __init__(self, lm):
        from peft import get_peft_model_state_dict

        self.lm, self.names = lm, []
        self.weights = get_peft_model_state_dict(lm, adapter_name="default", save_embedding_layers=False)

    def add(self) -> str:
        from peft import set_peft_model_state_dict

        name = f"serve_{len(self.names)}"
        self.lm.add_adapter(name, self.lm.peft_config["default"])
        set_peft_model_state_dict(self.lm, {k: v.clone() for k, v in self.weights.items()}, adapter_name=name)
        self.names.append(name)
        return name

    def nbytes(self, _name) -> int:
        return sum(v.numel() * v.element_size() for v in self.weights.values())

    def remove(self) -> None:
        if not self.names:
            return
        for name in self.names:
            self.lm.delete_adapter(name)
        self.lm.set_adapter("default")
        self.names = []


def _lora_paths(lm, pad: int, start: list[int], adapters: _Adapters) -> list[ServingPath]:
    parts = lm_parts(lm)

    def batch(names, queries):
        with lm._enable_peft_forward_hooks(adapter_names=list(names)):  # PEFT's mixed-adapter batch
            answer_batch(parts, [_student_reads(q, start) for q in queries], [q.n for q in queries], pad)

    def merged():
        with torch.no_grad():
            return copy.deepcopy(lm).merge_and_unload()

    def merged_batch(models, queries):
        answer_batch(lm_parts(models[0]), [_student_reads(q, start) for q in queries], [q.n for q in queries], pad)

    whole = model_bytes(lm.get_base_model()) - adapters.nbytes(None)  # the base model's own weights
    return [ServingPath(LORA, SHARED, adapters.add, batch, adapters.nbytes),
            ServingPath(LORA, PER_USER, adapters.add, batch, adapters.nbytes),
            ServingPath(LORA_MERGED, SHARED, merged, merged_batch, model_bytes, replaces_model_bytes=whole),
            ServingPath(LORA_MERGED, PER_USER, merged, merged_batch, model_bytes, batches=False, replaces_model_bytes=whole,
                        note="a model per user: their queries cannot share a forward (batch 1, one after another)")]


def serving_paths(lm, pad: int, prefix: list[int], start: list[int], arms: list) -> tuple[list[ServingPath], list]:
    """The run's ways to serve (see the module doc), and what to undo afterwards."""
    if is_cartridge(lm):
        base, view, extra, cleanup = lm_parts(lm.get_base_model()), nullcontext, _cartridge_paths(lm, pad, start), []
    else:
        adapters = _Adapters(lm)
        base, view, extra, cleanup = lm_parts(lm), lm.disable_adapter, _lora_paths(lm, pad, start, adapters), [adapters]
    paths = _cache_paths(ICL_CACHED, base, pad, lambda shared: PrefixCache.encode(base, prefix, shared=shared),
                         lambda q: q.suffix, view)
    for arm in arms:
        if isinstance(arm, CacheArm):
            paths += _cache_paths(arm.name, base, pad, lambda _, a=arm: a.build(base), lambda q, a=arm: a.lead + q.suffix,
                                  view)
    return paths + extra, cleanup


def measure(settings, queries: list, lm, pad: int, prefix: list[int], start: list[int], arms: list,
            device: torch.device) -> dict:
    """``method_info.serving``: per way and regime the measured throughput and memory, and (with a budget)
    the users that fit it."""
    paths, cleanup = serving_paths(lm, pad, prefix, start, arms)
    out: dict = {}
    try:
        while paths:  # each path dropped once measured: its states (and the cache its users copied) freed
            path = paths.pop(0)
            measured = measure_serving(path, queries, settings.batch_sizes, settings.repeats, device)
            if settings.memory_budget is not None:
                measured["within_budget"] = users_within(int(settings.memory_budget), measured)
            out.setdefault(path.name, {})[path.regime] = measured
            for c in cleanup:
                c.remove()
    finally:
        for c in cleanup:
            c.remove()
    return {"batch_sizes": sorted(set(settings.batch_sizes)), "repeats": settings.repeats,
            "threads": torch.get_num_threads(), "device": str(device), "queries": len(queries),
            "memory_budget_bytes": None if settings.memory_budget is None else int(settings.memory_budget),
            "resident": RESIDENT, "paths": out}


RESIDENT = ("the base model with the trained adapter or cartridge, the run's held-out states freed; per way of "
            "serving, its own states only (users_built of them; the others' freed): resident_before_bytes is the "
            "level before them")
