"""adaptbench: which adaptation method should I use, and what does it cost?

ICL, context distillation and fine-tuning of decoder LMs, compared on the same few-shot samples, with
in-domain and out-of-domain accuracy, wall time and peak memory measured for every run.
"""

from __future__ import annotations

__version__ = "0.1.0"


def run(config: str, overrides: list[str] = (), *, output_dir: str | None = None, data_dir: str | None = None,
        force: bool = False, jobs: int = 1) -> list[dict]:
    """Run a sweep config (as ``adaptbench run``) and return its result records."""
    from .sweep.plan import make_plan
    from .sweep.runner import run_sweep

    return run_sweep(make_plan(config, list(overrides), output_dir, data_dir), force=force, jobs=jobs)


def load_results(path: str):
    """All result records under ``path`` as a pandas DataFrame (one row per run x eval set x slice)."""
    from .store.results import load_results as _load

    return _load(path)


def load_adapted(run: str, results_dir: str = "results", device: str = "cpu"):
    """``(model, tokenizer)`` of a finished run's adapted model (saved with ``train.save: true``), ready to
    generate: the base model with its LoRA adapter or cartridge, BitFit biases or fully trained weights."""
    from .store.adapted import load_adapted as _load

    return _load(run, results_dir, device)


__all__ = ["__version__", "load_adapted", "load_results", "run"]
