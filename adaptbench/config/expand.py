"""From a raw config to runs: presets, ``include:`` blocks and ``grid:`` variants, validated, expanded into
the cartesian product of the axes; a settings block joins only the runs of the method or policy it belongs
to (:mod:`.blocks`), so settings of other methods never change a run's id.
"""

from __future__ import annotations

import copy
import itertools

from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from .blocks import BLOCKS, METHODS, POLICIES, MethodTraits, require_registered
from .messages import format_errors
from .reading import ALIASES, _set_dotted, load_raw
from .schema import RunSpec, SweepConfig
from .settings import SWEEP_PRESETS


def expand(raw: dict, source: str = "<config>") -> tuple[SweepConfig, list[RunSpec]]:
    """Validate a raw config and expand it into run specs (order: as listed, seeds innermost).

    ``include:`` lists blocks that each override the top-level settings and expand on their own (e.g.
    ``{method: pbft, trainable: [full, lora]}`` and ``{method: vanilla, trainable: full}``); the runs of
    all blocks together form the sweep.  Without it the top level is the one block.
    """
    require_registered()
    includes = raw.get("include")
    if includes is None:
        parts = [raw]
    elif not isinstance(includes, list) or not includes or not all(isinstance(b, dict) for b in includes):
        raise ConfigError(f"{source}: include must be a non-empty list of mappings of settings")
    else:
        base = {k: v for k, v in raw.items() if k != "include"}
        parts = [_merge(base, part) for part in includes]
    sweep, runs = None, []
    overrides = getattr(raw, "overrides", {})
    for i, part in enumerate(parts):
        where = f"{source} (include[{i}])" if includes is not None else source
        for variant in _grid_variants(_with_preset(part, where), where):
            sweep_i = validate_sweep(variant, where, overrides)
            sweep = sweep or sweep_i
            runs += _cells(sweep_i, where)
    seen: dict[str, RunSpec] = {}
    for r in runs:
        seen.setdefault(r.run_id, r)
    return sweep, list(seen.values())


def validate_sweep(variant: dict, source: str, overrides: dict | None = None) -> SweepConfig:
    """The sweep's settings: each registered block validated by its own class (defaults where absent), the
    rest by :class:`SweepConfig`; methods and policies must be registered ones."""
    data = {k: v for k, v in variant.items() if k not in BLOCKS}
    data["blocks"] = {name: _validate(block.settings, variant.get(name, {}), source, overrides, (name,))
                      for name, block in BLOCKS.items()}
    sweep = _validate(SweepConfig, data, source, overrides)
    for m in sweep.method:
        if m not in METHODS:
            raise ConfigError(f"{source}: invalid config\n  - method: unknown method {m!r}; methods: "
                              f"{', '.join(METHODS)}")
    for t in sweep.trainable:
        if t not in POLICIES:
            raise ConfigError(f"{source}: invalid config\n  - trainable: unknown trainable policy {t!r}; policies: "
                              f"{', '.join(POLICIES)}")
    return sweep


def _with_preset(block: dict, source: str) -> dict:
    """The block on top of its sweep preset's settings (``preset: reference``): the block's own values win."""
    name = block.get("preset")
    if name is None:
        return block
    if name not in SWEEP_PRESETS:
        raise ConfigError(f"{source}: preset {name!r} is unknown (presets: {', '.join(SWEEP_PRESETS)})")
    return _merge(SWEEP_PRESETS[name], block)


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``; mappings merge key by key, anything else is replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


#: Settings that are not a run's: ``grid:`` over them would silently use one value for the whole sweep.
NOT_SWEEPABLE = {"name": "it names the sweep's results folder -- make one sweep per name",
                 "output_dir": "it is where the sweep's results go -- make one sweep per folder",
                 "runtime": "runtime options do not change a run's result -- set them once",
                 "grid": "a grid cannot sweep the grid", "include": "include blocks are expanded on their own",
                 "preset": "presets fill settings before the grid is expanded -- use include blocks, one per preset"}


def _grid_variants(block: dict, source: str) -> list[dict]:
    grid = block.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) for v in grid.values()):
        raise ConfigError(f"{source}: grid must map dotted settings to lists of values")
    for key in grid:
        first = ALIASES.get(str(key).split(".")[0], str(key).split(".")[0])
        if first in NOT_SWEEPABLE:
            raise ConfigError(f"{source}: grid: {key!r} cannot be swept: {NOT_SWEEPABLE[first]}")
        if not grid[key]:
            raise ConfigError(f"{source}: grid: {key!r} has no values (an empty list would make no runs)")
    out = []
    for values in itertools.product(*grid.values()):
        cfg = copy.deepcopy(block)
        for key, value in zip(grid, values):
            _set_dotted(cfg, key, value, source)
        out.append(cfg)
    return out


def _cells(sweep: SweepConfig, source: str) -> list[RunSpec]:
    """The product of the axes; each run carries the blocks of its method and policy only (ICL runs have no
    ``train``/``trainable``)."""
    out = []
    for model, task, method, prompt, shots in itertools.product(sweep.model, sweep.task, sweep.method,
                                                               sweep.prompt, sweep.shots):
        traits = METHODS[method]
        if model.api is not None and not traits.api_models:
            raise ConfigError(f"{source}: model {model.name!r} (api: {model.api}) cannot run method {method!r}, "
                              f"which trains local weights; an api model runs icl, and teaches context distillation "
                              f"as cd.teacher (with a local student model)")
        for trainable in (sweep.trainable if traits.trains else [None]):
            if trainable is not None:
                check_trainable(traits, trainable, source)
            for train_seed, data_seed in itertools.product(sweep.train_seeds if traits.trains else [0],
                                                           sweep.data_seeds):
                blocks = {name: sweep.blocks[name] for name, block in BLOCKS.items() if block.joins(traits, trainable)}
                spec = {"model": model, "task": task, "method": method, "shots": shots, "data_seed": data_seed,
                        "train_seed": train_seed, "balanced": sweep.balanced, "prompt": prompt,
                        "eval": sweep.eval, "trainable": trainable, "blocks": blocks}
                out.append(_validate(RunSpec, spec, source))
    return out


def check_trainable(traits: MethodTraits, policy: str, source: str) -> None:
    if policy not in traits.trainable:
        raise ConfigError(f"{source}: method {traits.name!r} cannot use trainable: {policy} "
                          f"(it supports {', '.join(traits.trainable)})" + traits.hints.get(policy, ""))


def _validate(model_cls: type[BaseModel], data, source: str, overrides: dict | None = None, at: tuple = ()):
    try:
        return model_cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e, source, model_cls, overrides, at)) from None


def load_sweep(path: str, overrides: list[str] = ()) -> tuple[SweepConfig, list[RunSpec]]:
    return expand(load_raw(path, overrides), path)
