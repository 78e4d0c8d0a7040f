"""adaptbench: which adaptation method should I use, and what does it cost?

ICL, context distillation and fine-tuning of decoder LMs, compared on the same few-shot samples, with
in-domain and out-of-domain accuracy, wall time and peak memory measured for every run.
"""

from __future__ import annotations

__version__ = "0.1.0"


def run(config: str, overrides: list[str] = (), *, output_dir: str | None = None, data_dir: str | None = None,
        force: bool = False) -> list[dict]:
    """Run a sweep config (as ``adaptbench run``) and return its result records."""
    from .runner import make_plan, run_sweep

    return run_sweep(make_plan(config, list(overrides), output_dir, data_dir), force=force)


__all__ = ["__version__", "run"]
