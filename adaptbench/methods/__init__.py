"""Adaptation methods, registered by name.  ``adaptbench methods`` prints this registry."""

from .base import METHODS, Method, Predictions, Predictor, RunContext, register
from . import icl, pbft, vanilla  # noqa: F401  (register themselves)

__all__ = ["METHODS", "Method", "Predictions", "Predictor", "RunContext", "register"]
