"""What a model kind can do here, as one object: each field is None (it can) or the reason it cannot.

Methods and the scoring code ask these questions instead of asking what kind of model they hold -- a
causal LM, an encoder-decoder, a model behind an API -- and the run's record states every reason
(``method_info.capabilities_off``), in one convention: which optimisation or feature was off, and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

ALIBI_MODELS = {"bloom", "mpt", "falcon", "baichuan", "jais"}
SHARED_PREFIX_ATTENTION = "adaptbench_shared_prefix"  # the attention function scoring registers in transformers


@dataclass(frozen=True)
class Capabilities:
    prefix_cache: str | None = None  # a KV cache of a shared prefix serves later tokens
    shared_prefix: str | None = None  # a batch's queries attend to one copy of the prefix (scoring.shared_prefix)
    packing: str | None = None  # training batches packed several examples to a row
    sequence_targets: str | None = None  # next-token predictions along an input (sequence-level distillation)
    vocab_targets: str | None = None  # the whole next-token distribution (cd.target: vocab)
    training: str | None = None  # local weights to adapt
    poolings: tuple[str, ...] = ("last_token",)  # what a classification head can read (vanilla.pooling)

    def off(self) -> dict[str, str]:
        """The reasons, by capability, of everything that is off (the record's ``capabilities_off``)."""
        return {k: v for k, v in asdict(self).items() if isinstance(v, str)}


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def sliding_window(config) -> str | None:
    """Why keys/values cached for a prefix cannot serve later tokens as they are (sliding-window
    attention: a token sees only the last W positions), or None.  Rules out any prefix cache."""
    config = _text_config(config)
    if any("sliding" in str(t) for t in getattr(config, "layer_types", None) or ()):
        return "the model has sliding-window attention layers"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "the model uses sliding-window attention"
    return None


def shared_prefix_unsupported(config) -> str | None:
    """Why this model's attention cannot take the shared-prefix path (None: it can)."""
    window = sliding_window(config)
    if window:
        return window
    config = _text_config(config)
    if getattr(config, "attn_logit_softcapping", None):
        return "attention logit soft-capping"
    if getattr(config, "alibi", False) or config.model_type in ALIBI_MODELS:
        return "ALiBi position biases"
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager", SHARED_PREFIX_ATTENTION, None):
        return f"attention implementation {config._attn_implementation!r}"
    return None


ENCODER_DECODER = ("encoder-decoder model: its encoder attends in both directions, so the demonstrations' states "
                   "depend on the query that follows them; the whole prompt is encoded per query")


def local_capabilities(config) -> Capabilities:
    """A model with local weights, from its config."""
    if getattr(config, "is_encoder_decoder", False):
        return Capabilities(
            prefix_cache=ENCODER_DECODER, shared_prefix=ENCODER_DECODER,
            packing=("encoder-decoder model: packing builds causal masks for one sequence per example; batches "
                     "are padded per batch instead"),
            sequence_targets=("an encoder-decoder reads its input whole in the encoder and predicts no token along "
                              "it: use cd.target: labels or vocab (scored at its decoder's first position)"),
            poolings=("decoder_first", "encoder_mean"))
    impl = getattr(config, "_attn_implementation", "sdpa") or "sdpa"
    window = sliding_window(config)
    return Capabilities(
        prefix_cache=window, shared_prefix=shared_prefix_unsupported(config),
        packing=None if impl in ("sdpa", "eager") else f"attention implementation {impl!r} takes no 4D attention mask")


API = ("a model behind an API gives the top log-probabilities of the next token for a prompt text, and "
       "nothing else")
API_CAPABILITIES = Capabilities(
    prefix_cache="api model: the server keeps no state adaptbench can reuse (its own prompt caching, if any, is the "
                 "server's)",
    shared_prefix=API, packing=API, sequence_targets=API, vocab_targets=API, training=API, poolings=())
