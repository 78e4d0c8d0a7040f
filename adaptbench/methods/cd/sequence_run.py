"""A sequence-level context-distillation run: inputs, the teacher pass, the student's loss, the held-out report.

Steps (each timed as a phase): ``teacher`` -- the context is encoded once (KV cache), every distilled
and held-out input runs against it, the teacher's distributions at every position are kept as top-k
targets (``teacher_targets.safetensors`` in the run folder), the held-out inputs' hidden states and the
base model's distance to the teacher are measured, and a few greedy generations are taken (that
evaluation is timed apart, as ``heldout_teacher``, so ``teacher`` is what distilling costs); then the
student trains on the targets (``train``); ``heldout`` measures what it recovered.  ``cd.context_tokens``
cuts the context to L tokens; ``cd.query_costs`` times queries answered with and without it
(:mod:`.query_costs`: ``query:icl`` and ``query:icl_cached`` in the teacher phase, ``query:distilled`` last).
"""

from __future__ import annotations

import gc
import os

import torch
from torch import nn

from ...costs import timed
from ...contexts import parse_context_setting, split_inputs
from ...distill_targets import CompactTargets, full_bytes_per_position
from ...errors import ConfigError, RunSkipped
from ...precision import autocast
from ...sampling import unlabeled_sample
from ...scoring import LMParts, PrefixCache, lm_parts, prefix_cache_unsupported
from ...seq2seq import is_encoder_decoder
from ...settings import CDSettings
from ...training import TrainItem
from ..base import RunContext
from .context import context_text, input_texts, user_turn_texts
from .heldout import HeldOut, compare, greedy, recovered
from .labels import check_same_tokenizer
from .query_costs import QueryCosts, cut_context
from .generate import continuations
from .sequence import (HiddenTargets, SequenceStudent, answer_logits, frozen_head, predicted_hidden,
                       sequence_loss, teacher_targets)

HELD_OUT_FROM_EVAL_SET = 16  # task inputs: held-out inputs are the first queries of the in-domain eval set


def check_causal(loaded, role: str) -> None:
    """Sequence targets line up a causal LM's next-token predictions along the input, student's and
    teacher's position by position; an encoder-decoder reads its input in the encoder and predicts nothing there."""
    if is_encoder_decoder(loaded.model):
        raise ConfigError(f"cd.target: sequence needs causal LMs; the {role} {loaded.source!r} is an encoder-decoder "
                          f"model, whose encoder reads the input whole and predicts no token along it: use "
                          f"cd.target: labels or vocab (scored at its decoder's first position)")


class SequenceDistillation:
    def __init__(self, settings: CDSettings):
        self.settings = settings
        self.targets: list[CompactTargets] = []
        self.student_ids: list[list[int]] = []
        self.held: HeldOut | None = None
        self.meter: QueryCosts | None = None  # cd.query_costs: the cost curve's three paths

    def build(self, ctx: RunContext) -> nn.Module:
        self.student = SequenceStudent(ctx.loaded.model, ctx.encoder.label_token_ids)
        self.label_ids = torch.tensor(ctx.encoder.label_token_ids, dtype=torch.long)
        return self.student

    def inputs(self, ctx: RunContext, tokenizer) -> tuple[list[str], list[int], list[str]]:
        """(distilled texts, their gold labels or -1, held-out texts)."""
        settings, source = self.settings, parse_context_setting(self.settings.context, ctx.config_dir)
        if settings.inputs is not None:
            texts, chat = input_texts(ctx.spec, ctx.config_dir)
            if chat:
                texts = user_turn_texts(source, tokenizer, texts)
            train, held, split = split_inputs(texts, settings.held_out, ctx.spec.data_seed)
            ctx.info["split"] = split
            return [texts[i] for i in train], [-1] * len(train), [texts[i] for i in held]
        extra = unlabeled_sample(ctx.pool, settings.unlabeled, ctx.spec.data_seed, ctx.sample)
        query = ctx.encoder.prompt.query
        held = [query(ex) for ex in (ctx.evals[0][2][:HELD_OUT_FROM_EVAL_SET] if ctx.evals else [])]
        # the demonstrations are in the teacher's context: distilling on them would show it its own answers
        labelled = [] if source.kind == "demonstrations" else list(ctx.sample)
        return ([query(ex) for ex in labelled + extra], [ex.label for ex in labelled] + [-1] * len(extra), held)

    def items(self, ctx: RunContext, loaded) -> list[TrainItem]:
        """Score every input with the teacher once; training items carry the index of their targets."""
        check_causal(loaded, "teacher")
        texts, gold, held_texts = self.inputs(ctx, loaded.tokenizer)
        with ctx.costs.phase("teacher") as phase:
            check_same_tokenizer(ctx, loaded.tokenizer)
            keep, phase.tokens = self._teacher(ctx, loaded, texts, held_texts)
        del loaded
        gc.collect()
        gold = gold + [-1] * (max(keep, default=-1) + 1 - len(gold))  # continuations carry no label
        return [TrainItem(self.student_ids[j], torch.tensor([float(j), float(gold[i])])) for j, i in enumerate(keep)]

    def _teacher(self, ctx: RunContext, loaded, texts: list[str], held_texts: list[str]) -> tuple[list[int], int]:
        settings, enc = self.settings, ctx.encoder
        source = parse_context_setting(settings.context, ctx.config_dir)
        text, about = context_text(source, ctx, loaded.tokenizer)
        context = cut_context(enc.encode(text), settings.context_tokens, source)
        if len(context) >= loaded.window:
            raise RunSkipped(f"the context is {len(context)} tokens; the teacher's window is {loaded.window} tokens "
                             f"(no truncation is done)")
        parts, pad = lm_parts(loaded.model), loaded.tokenizer.pad_token_id
        inputs = [enc.text_ids(t) for t in texts]
        self._icl_costs(ctx, parts, pad, context, inputs, held_texts, loaded.window)
        no_cache = prefix_cache_unsupported(loaded.model.config)
        cache, encode_seconds = timed(lambda: None if no_cache else PrefixCache.encode(parts, context), parts.device)
        keep = [i for i, x in enumerate(inputs) if x and len(context) + len(x) <= loaded.window]
        dropped = len(texts) - len(keep)
        if settings.generate is not None:  # input + teacher-sampled continuation, as extra inputs
            inputs, keep = self._continued(ctx, loaded, context, cache, inputs, keep)
        with ctx.progress("teacher", len(keep)) as advance:
            hidden = predicted_hidden(parts, context, [inputs[i] for i in keep], bool(enc.start_ids), pad, cache,
                                      on_batch=advance)
        targets = teacher_targets(parts, hidden, settings.temperature, settings.store, settings.top_k)
        bounds = torch.tensor([0] + [len(h) for h in hidden]).cumsum(0).tolist()
        self.targets = [targets.rows(a, b) for a, b in zip(bounds, bounds[1:])]
        self.student_ids = [enc.start_ids + inputs[i] for i in keep]
        if self.meter is not None:  # before the held-out states exist, as for the other two paths
            self.meter.icl_cached(parts, cache, encode_seconds, no_cache)
        with ctx.costs.interval("heldout_teacher"):  # evaluation, not part of what distilling costs
            # one frozen copy of the teacher's output layer serves the hidden targets and the held-out states
            head = targets.head if isinstance(targets, HiddenTargets) else None
            self._held_out(ctx, loaded, parts, context, cache, held_texts, head)
        self._save(ctx, targets, about, len(context), dropped)
        return keep, len(context) + sum(len(inputs[i]) for i in keep)

    def _continued(self, ctx: RunContext, loaded, context, cache, inputs, keep) -> tuple[list, list]:
        """The inputs plus ``generate.n`` teacher-sampled continuations of each (kept if they fit the window)."""
        g = self.settings.generate
        sampled = continuations(loaded.model, loaded.tokenizer, context, [inputs[i] for i in keep], cache, g.n,
                                g.max_new_tokens, g.temperature, g.seed)
        extra = [inputs[i] + c for i, c in zip([i for i in keep for _ in range(g.n)], sampled)]
        fits = [len(inputs) + j for j, x in enumerate(extra) if len(context) + len(x) <= loaded.window]
        ctx.info["generated_inputs"] = len(fits)
        return inputs + extra, keep + fits

    def _icl_costs(self, ctx: RunContext, parts, pad: int, context: list[int], inputs: list[list[int]],
                   held_texts: list[str], window: int) -> None:
        """cd.query_costs: choose the timed queries and time ICL re-encoding the context, with the teacher
        loaded and before its cache exists (the cached path is timed once the teacher has built it)."""
        if not self.settings.query_costs:
            return
        self.meter = QueryCosts(ctx, self.settings.query_costs, pad)
        self.meter.choose([ctx.encoder.text_ids(t) for t in held_texts], inputs, window - len(context))
        self.meter.icl(parts, context)

    def _held_out(self, ctx: RunContext, loaded, parts, context, cache, held_texts: list[str],
                  head: LMParts | None) -> None:
        """The held-out inputs' teacher states, the base model's distance to them, and the generations."""
        enc, pad = ctx.encoder, loaded.tokenizer.pad_token_id
        held = [x for x in (enc.text_ids(t) for t in held_texts) if x and len(context) + len(x) <= loaded.window]
        if not held:
            return
        hidden = predicted_hidden(parts, context, held, bool(enc.start_ids), pad, cache)
        self.held = HeldOut([enc.tokenizer.decode(x) for x in held], [enc.start_ids + x for x in held], hidden,
                            head or frozen_head(parts))
        base_model = ctx.loaded.model  # the student's model before training, without the context
        self.held.base = compare(self.held, lm_parts(base_model), pad)
        n = min(self.settings.generations, len(held))
        tok, new = loaded.tokenizer, self.settings.max_new_tokens
        self.held.generations = [{"input": self.held.texts[i],
                                  "base": greedy(base_model, tok, self.held.student_ids[i], new),
                                  "teacher": greedy(loaded.model, tok, context + held[i], new)} for i in range(n)]

    def _save(self, ctx: RunContext, targets, about: dict, context_tokens: int, dropped: int) -> None:
        full = full_bytes_per_position(targets.vocab_size)
        ctx.info.update(about, target="sequence", store=self.settings.store, context_tokens=context_tokens,
                        distill_inputs=len(self.targets), distill_dropped=dropped,
                        distill_positions=targets.n_positions, bytes_per_position=targets.bytes_per_position,
                        full_bytes_per_position=full, target_bytes_ratio=round(targets.bytes_per_position / full, 5))
        if isinstance(targets, CompactTargets):
            ctx.info["top_k"] = targets.k
            if targets.clamped:
                ctx.info["top_k_note"] = (f"cd.top_k {targets.requested_k} is larger than the vocabulary "
                                          f"({targets.vocab_size} tokens): all tokens kept")
        if ctx.out_dir:
            os.makedirs(ctx.out_dir, exist_ok=True)
            path = os.path.join(ctx.out_dir, "teacher_targets.safetensors")
            targets.save(path, {"temperature": self.settings.temperature, "inputs": len(self.targets)})
            ctx.info["teacher_targets"] = path

    def loss(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """alpha * T^2 * mean per-position KL + (1 - alpha) * CE(gold) at the answer position (task inputs)."""
        settings = self.settings
        idx, gold = target[:, 0].long().tolist(), target[:, 1].long()
        lengths = [len(self.student_ids[i]) for i in idx]
        parts = lm_parts(self.student.lm)
        loss = settings.alpha * sequence_loss(parts, hidden, lengths, [self.targets[i] for i in idx],
                                              settings.temperature)
        has_gold = gold >= 0
        if settings.alpha < 1 and has_gold.any() and len(self.label_ids):
            logits = answer_logits(parts, hidden, lengths, self.label_ids.to(hidden.device))
            loss = loss + (1 - settings.alpha) * nn.functional.cross_entropy(logits[has_gold], gold[has_gold])
        return loss

    def evaluate(self, ctx: RunContext, model: nn.Module) -> None:
        """What the trained student recovered on the held-out inputs, and its generations beside the others';
        with cd.query_costs, what a query costs the student, and the break-even counts."""
        self.targets = []  # training is over: they need not weigh on the memory measured from here on
        if self.held is not None:
            with ctx.costs.phase("heldout"), autocast(ctx.loaded.device, ctx.spec.train.mixed_precision):
                parts = lm_parts(model.lm)
                ctx.info["heldout"] = recovered(self.held.base,
                                                compare(self.held, parts, ctx.loaded.tokenizer.pad_token_id))
                for g, ids in zip(self.held.generations, self.held.student_ids):
                    g["student"] = greedy(model.lm, ctx.loaded.tokenizer, ids, self.settings.max_new_tokens)
            ctx.info["generations"] = self.held.generations
            self.held = None
        if self.meter is not None:  # the held-out states are freed: memory as when the ICL paths were timed
            self.meter.distilled(lm_parts(model.lm), ctx.encoder.start_ids)
            self.meter.finish()
