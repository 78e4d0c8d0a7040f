"""Adaptation methods, registered by name.  ``adaptbench methods`` prints this registry."""

from .base import METHODS, Method, Predictor, RunContext, register
from . import icl, pbft, vanilla, cd  # noqa: F401, I001  (register themselves, in this order)

__all__ = ["METHODS", "Method", "Predictor", "RunContext", "register"]
