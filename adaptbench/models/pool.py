"""The model a sweep holds between runs.
"""

from __future__ import annotations

import gc

from ..config.settings import ModelSpec
from .api import load_api_model
from .loading import GGUFSnapshots, LoadedModel


class ModelPool:
    """Holds at most one model, so every run's memory is that of one model plus what the run needs.

    Methods that only read the model (ICL) reuse the loaded model across runs.  A method that trains
    gets a model loaded for it alone (the held one is freed first): keeping a clean copy beside it
    would add a model's size to the training runs' measured peak memory.  A model read from a GGUF
    file is dequantized once and snapshotted as safetensors in a temporary folder, so reloading it is
    quick.
    """

    def __init__(self):
        self.spec: ModelSpec | None = None
        self.held: LoadedModel | None = None
        self.snapshots = GGUFSnapshots()

    def get(self, spec: ModelSpec, fresh: bool) -> tuple[LoadedModel, bool]:
        """(model, reused).  ``fresh``: the caller will change the weights, so it gets its own."""
        if not fresh and self.spec == spec and self.held is not None:
            return self.held, True
        self.spec = self.held = None  # free the held model before loading another
        gc.collect()
        loaded = self.load(spec)
        if not fresh:
            self.spec, self.held = spec, loaded
        return loaded, False

    def load(self, spec: ModelSpec) -> LoadedModel:
        """A model of its own (not held): local weights, or the client of an api model."""
        return load_api_model(spec) if spec.api is not None else self.snapshots.load(spec)
