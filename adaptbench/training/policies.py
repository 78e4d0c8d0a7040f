"""Which parameters a fine-tuning method trains: full, head, bitfit, lora, cartridge (+ freeze_embeddings).

Policies act on a task model (``.lm``: the causal LM; ``.head``: a new classification head, or None)
and report the trainable and total parameter counts measured from the model afterwards.

BitFit (Ben Zaken et al., 2022) trains bias terms only.  Embeddings and the LM head stay frozen --
unlike the reference code, whose "BitFit" mode still trains the LM head (tied to the input
embeddings).  Models without biases (Llama, T5) get zero-initialised biases on their attention and MLP
projections only when ``bitfit.add_biases`` asks for it, and the record says so.
LoRA (Hu et al., 2022) goes through ``peft``; target modules default to peft's per-architecture
choice (attention query/value projections: ``q_proj``/``v_proj``, T5's ``q``/``v``).
A cartridge (Eyuboglu et al., 2025) is a trained KV prefix through peft's ``CartridgeConfig``
(:mod:`adaptbench.models.cartridge`); the method initialises it (from its context's first tokens by default).
"""

from __future__ import annotations

import warnings

import torch
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt
from torch import nn

from ..config.blocks import Policy, register_policy
from ..config.settings import Strict
from ..errors import ConfigError


class LoraSettings(Strict):
    lr: PositiveFloat | None = Field(None, description="learning rate for LoRA runs (adapters usually want ~10x "
                                                       "the full fine-tuning rate); default: train.lr")
    r: PositiveInt = Field(8, description="rank of the update matrices")
    alpha: PositiveFloat = Field(16, description="scaling: updates are multiplied by alpha / r")
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(
        None, description="module names to adapt; default per architecture (attention query/value)")


class BitfitSettings(Strict):
    lr: PositiveFloat | None = Field(None, description="learning rate for BitFit runs; default: train.lr")
    add_biases: bool = Field(False, description="for models without bias terms (Llama): add zero-initialised "
                                                "biases to the attention and MLP projections and train those")


class CartridgeSettings(Strict):
    lr: PositiveFloat | None = Field(None, description="learning rate for cartridge runs (a KV prefix wants a high "
                                                       "one: the paper uses 2e-2); default: train.lr")
    num_virtual_tokens: PositiveInt = Field(64, description="positions of the trained KV prefix (its bytes: "
                                            "tokens x layers x 2 x kv heads x head dim x 4 in float32)")
    init: Literal["context", "text", "random"] = Field(
        "context", description="context: the KV cache of the context's first tokens (as the teacher reads them; "
                               "for pbft the demonstrations); text: of cartridge.init_text; random: PEFT's normal init")
    init_text: str | None = Field(None, description="init: text: the text whose first tokens' KV cache starts it")
    num_frozen_tokens: NonNegativeInt = Field(1, description="first prefix positions kept frozen (an attention "
                                              "sink, the paper's and PEFT's default)")


# Projections that get a zero bias under bitfit.add_biases: Llama/Mistral/Qwen naming, then T5's
# (attention q/k/v/o; MLP wi/wo, gated wi_0/wi_1 in T5 v1.1 and Flan-T5).
BIAS_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                "q", "k", "v", "o", "wi", "wo", "wi_0", "wi_1")


def embedding_parameters(lm: nn.Module) -> set[int]:
    """ids of token and position embedding weights, and of the LM head (often tied to them)."""
    found: list[nn.Parameter] = []
    for module in (lm.get_input_embeddings(), lm.get_output_embeddings()):
        if module is not None:
            found += list(module.parameters())
    for name, module in lm.named_modules():  # learned positions: OPT/BART embed_positions, GPT-2 wpe, T5's buckets
        if isinstance(module, nn.Embedding) and any(k in name for k in ("embed_positions", "wpe",
                                                                         "relative_attention_bias")):
            found += list(module.parameters())
    return {id(p) for p in found}


def _bias_free_projections(lm: nn.Module) -> list[tuple[str, nn.Linear]]:
    return [(name, module) for name, module in lm.named_modules()
            if isinstance(module, nn.Linear) and module.bias is None and name.split(".")[-1] in BIAS_TARGETS]


def add_zero_biases(lm: nn.Module) -> list[str]:
    """Give bias-free attention/MLP projections a zero bias (the forward is unchanged until trained)."""
    added = []
    for name, module in _bias_free_projections(lm):
        w = module.weight
        module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        added.append(name)
    return added


def _bias_parameters(lm: nn.Module) -> list[tuple[str, nn.Parameter]]:
    skip = embedding_parameters(lm)
    return [(n, p) for n, p in lm.named_parameters() if n.endswith("bias") and id(p) not in skip]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each shared (tied) tensor counted once."""
    params = list(model.parameters())  # de-duplicated by nn.Module
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def apply_policy(model: nn.Module, policy: str, *, lora: LoraSettings | None = None,
                 bitfit: BitfitSettings | None = None, cartridge: CartridgeSettings | None = None,
                 freeze_embeddings: bool = False) -> dict:
    """Set ``requires_grad`` on ``model`` (a task model with ``.lm`` and ``.head``); returns what was done."""
    info: dict = {"policy": policy}
    for p in model.parameters():
        p.requires_grad_(False)
    head = getattr(model, "head", None)
    if policy == "full":
        skip = embedding_parameters(model.lm) if freeze_embeddings else set()
        for p in model.lm.parameters():
            p.requires_grad_(id(p) not in skip)
        info["freeze_embeddings"] = freeze_embeddings
    elif policy == "bitfit":
        if not _bias_parameters(model.lm):
            if not (bitfit and bitfit.add_biases):
                names = sorted({n.split(".")[-1] for n, _ in _bias_free_projections(model.lm)})
                raise ConfigError(f"trainable: bitfit -- {type(model.lm).__name__} has no bias terms to train; set "
                                  f"bitfit.add_biases: true to add zero-initialised biases to its attention and "
                                  f"MLP projections ({', '.join(names or BIAS_TARGETS)})")
            info["added_biases"] = len(add_zero_biases(model.lm))
        for _, p in _bias_parameters(model.lm):
            p.requires_grad_(True)
    elif policy == "lora":
        model.lm = _wrap_lora(model.lm, lora or LoraSettings())
        info["lora_target_modules"] = sorted(model.lm.peft_config["default"].target_modules)
    elif policy == "cartridge":
        model.lm = _wrap_cartridge(model.lm, cartridge or CartridgeSettings())
        info["num_virtual_tokens"] = model.lm.active_peft_config.num_virtual_tokens
    elif policy != "head":
        raise ConfigError(f"unknown trainable policy {policy!r}")
    if head is not None:
        for p in head.parameters():  # a new, randomly initialised head always trains
            p.requires_grad_(True)
    elif policy == "head":
        raise ConfigError("trainable: head trains only a classification head, and this method has none")
    info["trainable_params"], info["total_params"] = count_parameters(model)
    kept = (model.lm.prompt_encoder.parameters() if policy == "cartridge"  # its frozen sink positions too
            else (p for p in model.parameters() if p.requires_grad))
    info["trainable_bytes"] = sum(p.numel() * p.element_size() for p in kept)
    return info


def _wrap_lora(lm: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_modules, bias="none")
    try:
        with warnings.catch_warnings():  # peft 0.21 calls a transformers API deprecated in 5.x; not ours to fix
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            return get_peft_model(lm, config)
    except ValueError as e:  # unknown architecture without target_modules, or names not in the model
        raise ConfigError(f"lora: {e}".splitlines()[0] + " -- set lora.target_modules") from None


def _wrap_cartridge(lm: nn.Module, settings: CartridgeSettings) -> nn.Module:
    from peft import CartridgeConfig, get_peft_model

    window = getattr(lm.config, "max_position_embeddings", None)
    if window is not None and settings.num_virtual_tokens >= window:
        raise ConfigError(f"cartridge.num_virtual_tokens: {settings.num_virtual_tokens} is not below the model's "
                          f"window of {window} tokens")
    if settings.num_frozen_tokens > settings.num_virtual_tokens:
        raise ConfigError(f"cartridge.num_frozen_tokens: {settings.num_frozen_tokens} is more than "
                          f"num_virtual_tokens ({settings.num_virtual_tokens})")
    config = CartridgeConfig(task_type="CAUSAL_LM", num_virtual_tokens=settings.num_virtual_tokens,
                             num_frozen_tokens=settings.num_frozen_tokens)
    with warnings.catch_warnings():  # as for LoRA: peft calls a transformers API deprecated in 5.x
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(lm, config)


for _policy in (Policy("full", "every parameter of the LM (embeddings too, unless train.freeze_embeddings)"),
                Policy("head", "only a new classification head (vanilla)"),
                Policy("bitfit", "bias terms only (Ben Zaken et al., 2022); bitfit.add_biases for models without",
                       BitfitSettings),
                Policy("lora", "low-rank adapters through peft (Hu et al., 2022)", LoraSettings),
                Policy("cartridge", "a trained KV prefix through peft's CartridgeConfig (Eyuboglu et al., 2025)",
                       CartridgeSettings)):
    register_policy(_policy)
