"""Adaptation methods, registered by name.  ``adaptbench methods`` prints this registry."""

from .base import METHODS, Method, Predictions, Predictor, RunContext, register
from . import icl  # noqa: F401  (registers)

__all__ = ["METHODS", "Method", "Predictions", "Predictor", "RunContext", "register"]
