"""Models behind an HTTP API in a sweep: loading one (a client, no weights), its prompt encoder, ICL through
it, a CD teacher through it, the check before a sweep and the dry-run's request count.

A completions endpoint gives, for a prompt, the top-N log-probabilities of the next token -- the same
question ICL asks a local model at the answer position, with the prompt *text* (the server tokenises
it).  The verbalizer words must be single tokens of the server's tokenizer; :func:`check_endpoints`
asks the server before any run spends money.  The client (:mod:`adaptbench.api_models`) caches every
response on disk and retries with backoff; the record gets requests, cache hits, tokens and cost.
"""

from __future__ import annotations


import torch

from ..config.settings import ModelSpec
from .capabilities import API_CAPABILITIES
from .loading import LoadedModel


class ApiModel(torch.nn.Module):
    """Stands where a local model would (no parameters): the spec it calls."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.config = None


def is_api(loaded: LoadedModel) -> bool:
    return isinstance(loaded.model, ApiModel)


def load_api_model(spec: ModelSpec) -> LoadedModel:
    source = f"api:{spec.base_url or 'https://api.openai.com/v1'}/{spec.name}"
    return LoadedModel(ApiModel(spec), None, source, torch.device("cpu"), torch.float32, window=0,
                       info={"api": spec.api, "base_url": spec.base_url, "model_type": "api"},
                       capabilities=API_CAPABILITIES)


