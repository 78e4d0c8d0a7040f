"""What config knows of methods, trainable policies and their settings blocks -- without importing them.

Each method and policy registers itself when its module is imported (``adaptbench.methods`` imports them
all): a method its traits (does it train, which policies, can a model behind an API run it) and its
settings block (``icl:``, ``cd:``, ...); a policy its name and block (``lora:``, ``bitfit:``); the training
loop its ``train:`` block.  Config validates a sweep's blocks and decides which runs carry which block from
what is registered here, so a new method is one module plus one registration, and config never imports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .._util.registry import Registry
from .settings import Strict


@dataclass(frozen=True)
class MethodTraits:
    """A method as config sees it."""

    name: str
    description: str
    trains: bool = False  # changes the model's weights: it gets a fresh model and carries the train: block
    trainable: tuple[str, ...] = ()  # the trainable policies it supports
    settings: type[Strict] | None = None  # its own settings block, under its name
    api_models: bool = False  # whether a model behind an API can run it (only gives log-probabilities)
    hints: dict[str, str] = field(default_factory=dict)  # policy -> why it does not apply here


@dataclass(frozen=True)
class Block:
    """A settings block: its key in a config, its settings class, and which runs' specs carry it (only those:
    settings of another method never change a run's id)."""

    name: str
    settings: type[Strict]
    joins: Callable[[MethodTraits, str | None], bool]  # (the run's method, its trainable policy) -> carried?


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    settings: type[Strict] | None = None


METHODS: Registry[MethodTraits] = Registry("method")
POLICIES: Registry[Policy] = Registry("trainable policy")
BLOCKS: Registry[Block] = Registry("settings block")


def register_method(traits: MethodTraits) -> MethodTraits:
    METHODS.add(traits.name, traits)
    if traits.settings is not None:
        BLOCKS.add(traits.name, Block(traits.name, traits.settings,
                                      lambda method, _, name=traits.name: method.name == name))
    return traits


def register_policy(policy: Policy) -> Policy:
    POLICIES.add(policy.name, policy)
    if policy.settings is not None:
        BLOCKS.add(policy.name, Block(policy.name, policy.settings,
                                      lambda _, trainable, name=policy.name: trainable == name))
    return policy


def register_block(block: Block) -> Block:
    return BLOCKS.add(block.name, block)


def require_registered() -> None:
    """Validating a sweep needs the methods registered (``import adaptbench.methods`` does it)."""
    if not METHODS:
        raise RuntimeError("no adaptation method is registered: import adaptbench.methods before reading a config")
