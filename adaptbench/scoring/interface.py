"""The one model interface the methods use: every kind of model -- a causal LM, an encoder-decoder, a model
behind an API -- answers the same few questions, and what it cannot do is a field of its capabilities
holding the reason (:class:`adaptbench.models.capabilities.Capabilities`), never an ``if`` in a method.

- ``encoder(prompt, label_names)``: the prompt bound to the model's tokenizer (the verbalizer's tokens);
- ``scorer(encoder, contexts, ...)``: the verbalizer scores of texts read after contexts (ICL's queries
  after the demonstrations, a CD teacher's inputs after their contexts), as one :class:`Scores` type;
- ``capabilities``: which optimisations and features apply, or why not.

Training reads the local model's weights directly (``loaded.model``); a kind without them says so in
``capabilities.training``, and config refuses such runs before they start.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol

from ..models.capabilities import Capabilities
from ..models.loading import LoadedModel
from ..prompts.prompt import PromptEncoder
from .api import ApiContextScorer, ApiPromptEncoder, client
from .context import LocalContextScorer, Reading
from .scores import Scores


class ContextScorer(Protocol):
    def context_tokens(self, key: Hashable) -> int | None: ...

    def prepare(self, key: Hashable) -> dict: ...

    def read(self, items: list[tuple[Hashable, str]]) -> Reading: ...

    def fits(self, reading: Reading) -> list[bool]: ...

    def score(self, reading: Reading, indices: list[int] | None = None, *, name: str = "", cached: bool = True,
              full_vocab: bool = False, shard: bool = False, on_batch: Callable | None = None) -> Scores: ...


class ScoringModel:
    """A loaded model behind the interface: its capabilities, its prompt encoder, its context scorer."""

    def __init__(self, loaded: LoadedModel, runtime):
        self.loaded, self.runtime = loaded, runtime
        self.capabilities: Capabilities = loaded.capabilities
        self.api = loaded.info.get("api") is not None  # which implementation answers (the kind's own business)

    def encoder(self, prompt, label_names: tuple[str, ...]):
        if self.api:
            return ApiPromptEncoder(client(self.loaded.model.spec, self.runtime), prompt, label_names)
        return PromptEncoder(self.loaded.tokenizer, prompt, label_names)

    def scorer(self, encoder, contexts: dict[Hashable, str], *, label: str, progress: Callable, info: dict,
               batch_size="auto", cache: bool = True) -> ContextScorer:
        if self.api:
            return ApiContextScorer(self.loaded.model.spec, encoder, contexts, label=label, runtime=self.runtime,
                                    progress=progress, info=info)
        return LocalContextScorer(self.loaded, encoder, contexts, label=label, batch_size=batch_size,
                                  progress=progress, info=info, cache=cache)
