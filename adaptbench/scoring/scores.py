"""The one type for "scores of n examples over k labels": what every model kind returns and every method
predicts from -- a causal LM's verbalizer logits, a classification head's, an API's log-probabilities.
Rows that were not scored (too long for the window) are NaN; their predicted label is -1."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def log_softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of a (n, k) array (NaN rows stay NaN)."""
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@dataclass
class Scores:
    logits: np.ndarray  # (n, k) float32, in the order of the examples (an API's log-probabilities, under its full
    #                     distribution: their log-normaliser is 0)
    log_norm: np.ndarray | None = None  # (n,) log-sum-exp over the full vocabulary at the answer position
    tokens: int = 0  # real tokens run through the model (a cached prefix is charged where it was encoded)
    padded_tokens: int = 0  # positions computed, padding included
    vocab: np.ndarray | None = None  # (n, vocab) full next-token logits, when asked for
    compute_dtype: str | None = None  # what the scoring's matmuls ran in, where observed
    missing: np.ndarray | None = None  # (n, k) API: the token was not among the top-N returned (floored)
    floor: np.ndarray | None = None  # (n,) API: each row's floor, an upper bound of a missing token's log p
    usage: Any = None  # API: requests, cache hits, tokens (scoring.api_client.ApiUsage)

    @property
    def scored(self) -> np.ndarray:
        return np.isfinite(self.logits).all(axis=1)

    @property
    def labels(self) -> np.ndarray:
        """Predicted label ids; -1 where the example was not scored."""
        out = np.full(len(self.logits), -1)
        ok = self.scored
        out[ok] = self.logits[ok].argmax(axis=1)
        return out

    @property
    def predictions(self) -> np.ndarray:
        return self.logits.argmax(axis=1)

    @property
    def label_logprobs(self) -> np.ndarray:
        """log p(label) over the verbalizer tokens only (what the prediction is made from)."""
        return log_softmax(self.logits)

    @property
    def vocab_logprobs(self) -> np.ndarray:
        """log p(verbalizer token) under the full next-token distribution."""
        return self.logits - self.log_norm[:, None]
