"""The context a CD teacher reads, and the inputs both teacher and student read, as text.

``cd.context``: ``demonstrations`` (the data seed's k-shot sample, as in ICL), ``file:PATH`` (any
text, then the prompt's separator) or ``chat:PATH`` (a conversation, rendered with the tokenizer's
chat template when it has one).  ``cd.inputs``: a file of inputs (see :func:`adaptbench.contexts.read_inputs`);
inputs from a conversation file are user turns, rendered as the next turn of the context's
conversation, so what follows them is the assistant's reply.
"""

from __future__ import annotations

import os

from ...config.schema import RunSpec
from ...data.contexts import ContextSource, parse_context_setting, plain_chat, read_chat, read_inputs_and_answers, read_text_file, render_chat, split_inputs
from ...errors import ConfigError
from ...scoring.checks import Judge
from ..base import RunContext


def context_text(source: ContextSource, ctx: RunContext, tokenizer) -> tuple[str, dict]:
    """The context's text and what the record says about it."""
    if source.kind == "demonstrations":
        return ctx.encoder.context_text(ctx.sample), {"context": "demonstrations"}
    if source.kind == "file":
        return (read_text_file(source.path, "cd.context") + ctx.encoder.prompt.separator,
                {"context": "file", "context_file": source.path})
    turns = read_chat(source.path)
    text, rendering = render_chat(turns, tokenizer, source.path)
    return text, {"context": "chat", "context_file": source.path, "chat_rendering": rendering, "chat_turns": len(turns)}


def user_turn_texts(source: ContextSource, tokenizer, user_texts: list[str]) -> list[str]:
    """Each user text as the next turn after the context's conversation, up to where the reply starts.

    With a chat template: the rendering of context + turn (with the generation prompt) minus the
    rendering of the context (read and rendered once); otherwise ``"User: ...\\n\\nAssistant:"``, as
    :func:`plain_chat` renders."""
    templated = source.kind == "chat" and getattr(tokenizer, "chat_template", None)
    turns = read_chat(source.path) if templated else []
    before = tokenizer.apply_chat_template(turns, tokenize=False) if templated else ""
    out = []
    for text in user_texts:
        turn = [{"role": "user", "content": text}]
        after = (tokenizer.apply_chat_template(turns + turn, tokenize=False, add_generation_prompt=True)
                 if templated else "")
        out.append(after[len(before):] if templated and after.startswith(before) else plain_chat(turn) + "Assistant:")
    return out


def is_chat_file(path: str) -> bool:
    """Whether an inputs file is a conversation (its inputs are user turns)."""
    if not path.lower().endswith(".jsonl"):
        return False
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    return '"role"' in first and '"text"' not in first and '"question"' not in first


def input_texts(spec: RunSpec, config_dir: str) -> tuple[list[str], bool, list[list[str]] | None]:
    """The texts of ``cd.inputs`` (validated), whether they are user turns of a conversation, and the gold
    answers of a question file (None otherwise)."""
    path = os.path.join(config_dir, spec.cd.inputs)
    texts, answers = read_inputs_and_answers(path)
    return texts, is_chat_file(path), answers


def check_inputs(spec: RunSpec, config_dir: str) -> None:
    """Everything about the context and inputs that can be checked before a model loads."""
    settings = spec.cd
    source = parse_context_setting(settings.context, config_dir)
    if source.kind == "file":
        read_text_file(source.path, "cd.context")
    elif source.kind == "chat":
        read_chat(source.path)
    if settings.checks:
        Judge(settings.checks, config_dir)  # a call that cannot be imported stops the sweep here
    if settings.inputs is None:
        if settings.target == "sequence" and spec.task_name == "none":
            raise ConfigError("cd.inputs: a run without a task (task: none) needs a file of inputs to distil on")
        return
    if settings.target != "sequence":
        raise ConfigError(f"cd.inputs is for cd.target: sequence (this run distils {settings.target!r} targets "
                          f"at the answer position of the task's examples)")
    texts, _, _ = input_texts(spec, config_dir)
    split_inputs(texts, settings.held_out, spec.data_seed)

