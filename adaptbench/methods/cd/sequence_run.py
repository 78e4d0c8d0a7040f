"""A sequence-level context-distillation run: inputs, the teacher pass, the student's loss, the held-out report.

Steps (each timed as a phase): ``teacher`` -- every input is read after the context as one text
(:meth:`PromptEncoder.read_after`), the token prefix all readings share is encoded once (KV cache),
every distilled and held-out reading runs against it, the teacher's distributions at every position of
the inputs are kept as targets (``teacher_targets.safetensors`` in the run folder, with the token ids the
teacher read), the teacher writes a reply to each held-out input and the held-out states and the base
model's distance to them are measured (that evaluation is timed apart, as ``heldout_teacher``, so
``teacher`` is what distilling costs); then the student trains on the targets (``train``); ``heldout``
measures what it recovered, at the inputs and on the teacher's replies (:mod:`.heldout`).
``cd.context_tokens`` cuts the context to L tokens; ``cd.query_costs`` times queries answered with and
without it (:mod:`.query_costs`).
"""

from __future__ import annotations

import gc
import os
from contextlib import nullcontext

import torch
from torch import nn

from ..._util import distributed
from ...measure.breakeven import DISTILLED, ICL, ICL_CACHED
from ...data.contexts import parse_context_setting, split_inputs
from .targets import CompactTargets, full_bytes_per_position
from ...errors import ConfigError, RunSkipped
from ...training.checkpoint import faulting
from ...training.precision import observed_compute
from ...data.sampling import unlabeled_sample
from ...models.parts import LMParts
from ...models.interface import lm_parts
from ...scoring.core import PrefixCache
from .self_study import HELD_OUT_SEED, SelfStudySettings, held_out_count, save as save_requests, write_requests
from .settings import SELF_STUDY, CDSettings, GenerateSettings, ReplySettings
from ...training.loop import TrainItem
from ..base import RunContext
from .context import context_text, input_set, niah_inputs, user_turn_texts
from . import serving, shared
from .arms import arm_costs, build_arms, measure_arm
from .heldout import HeldOut, compare, greedy, greedy_many, recovered
from .reuse import TARGETS_FILE, Reused, lookup, mark_complete, note_reused, readings_key, sequence_targets
from .judge import ReplyJudging
from .labels import check_same_tokenizer
from .query_costs import DISTILL_PHASES, Query, QueryCosts, QueryPath, answer, cut_context
from .generate import continuations, eos_ids, greedy_batch
from .sequence import HiddenTargets, SequenceStudent, answer_logits, frozen_head, predicted_hidden, read_ids, sequence_loss, teacher_targets

HELD_OUT_FROM_EVAL_SET = 16  # task inputs: held-out inputs are the first queries of the in-domain eval set


def check_causal(loaded, role: str) -> None:
    """Sequence targets line up a model's next-token predictions along the input, student's and teacher's
    position by position: a model that makes none there (an encoder-decoder) says why in its capabilities."""
    why_not = loaded.capabilities.sequence_targets
    if why_not:
        raise ConfigError(f"cd.target: sequence needs causal LMs; the {role} {loaded.source!r}: {why_not}")


class SequenceDistillation:
    def __init__(self, settings: CDSettings):
        self.settings = settings
        self.targets: list[CompactTargets] = []
        self.student_ids: list[list[int]] = []
        self.held: HeldOut | None = None
        self.meter: QueryCosts | None = None  # cd.query_costs: the cost curve's three paths
        self.prefix: list[int] = []  # the tokens every teacher reading starts with (its KV cache's)
        self.together = False  # the paths of the cost curve are measured together, after training
        self.judging: ReplyJudging | None = None  # cd.checks or a question file: the held-out replies judged
        self.held_answers: list[list[str]] | None = None  # a question file's held-out gold answers
        self.held_groups: list[dict] | None = None  # and their groups (a needle's depth)
        self.arms: list = []  # cd.arms: other ways to answer the held-out queries (:mod:`.arms`)
        self.texts: list[str] = []  # the distilled inputs, then the held-out ones, as the teacher read them
        self.start_ids: list[int] = []  # the tokens a reading starts with (the student's too)
        self.reused: Reused | None = None  # a killed attempt's teacher targets, reused (:mod:`.reuse`)
        self.shared_from: str | None = None  # or another student's run's, shared (:mod:`.shared`)
        self.shared_dir: str | None = None  # where this sweep's students share them (set in :meth:`items`)

    def build(self, ctx: RunContext) -> nn.Module:
        self.student = SequenceStudent(ctx.loaded.model, ctx.encoder.label_token_ids)
        self.label_ids = torch.tensor(ctx.encoder.label_token_ids, dtype=torch.long)
        return self.student

    def inputs(self, ctx: RunContext, loaded) -> tuple[list[str], list[int], list[str]]:
        """(distilled texts, their gold labels or -1, held-out texts)."""
        settings, source = self.settings, parse_context_setting(self.settings.context, ctx.config_dir)
        tokenizer = loaded.tokenizer
        if settings.inputs == SELF_STUDY:
            return self._self_study(ctx, loaded, source)
        if settings.inputs is not None or source.kind == "niah":
            found = niah_inputs(ctx.spec) if source.kind == "niah" else input_set(ctx.spec, ctx.config_dir)
            texts = user_turn_texts(source, tokenizer, found.texts) if found.chat else found.texts
            train, held, split = split_inputs(texts, settings.held_out, ctx.spec.data_seed)
            ctx.info["split"] = split
            self.held_answers = None if found.answers is None else [found.answers[i] for i in held]
            self.held_groups = None if found.groups is None else [found.groups[i] for i in held]
            plain = (found.chat or source.kind == "chat") and not getattr(tokenizer, "chat_template", None)
            if ReplyJudging.wanted(settings, found.answers):
                self.judging = ReplyJudging(settings, ctx.config_dir, self.held_answers, plain, found.kind)
            return [texts[i] for i in train], [-1] * len(train), [texts[i] for i in held]
        if settings.checks:
            self.judging = ReplyJudging(settings, ctx.config_dir, None, False)
        extra = unlabeled_sample(ctx.pool, settings.unlabeled, ctx.spec.data_seed, ctx.sample)
        query = ctx.encoder.prompt.query
        held = [query(ex) for ex in (ctx.evals[0][2][:HELD_OUT_FROM_EVAL_SET] if ctx.evals else [])]
        # the demonstrations are in the teacher's context: distilling on them would show it its own answers
        labelled = [] if source.kind == "demonstrations" else list(ctx.sample)
        return ([query(ex) for ex in labelled + extra], [ex.label for ex in labelled] + [-1] * len(extra), held)

    def _self_study(self, ctx: RunContext, loaded, source) -> tuple[list[str], list[int], list[str]]:
        """Requests the model writes about chunks of the context, as user turns (:mod:`.self_study`); held
        out: requests of their own samples, or with a haystack its needle questions (none of them trained on)."""
        settings, tok = self.settings, loaded.tokenizer
        how = settings.self_study or SelfStudySettings()
        text = cut_context(ctx.encoder, context_text(source, ctx, tok)[0], settings.context_tokens, source)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with ctx.costs.phase("self_study") as phase, ctx.compute(loaded):
            found = shared.self_study(self.shared_dir, ids, ctx.out_dir)  # another student's run wrote them
            if found:
                train, held = found["train"], found["held"]
                phase.extra.update(seconds_shared=found["seconds"], shared_from=found["run_id"])
            else:
                train = write_requests(loaded.model, tok, ids, how, how.n, how.seed, loaded.window)
                held = [] if source.kind == "niah" else write_requests(
                    loaded.model, tok, ids, how, held_out_count(settings.held_out, how.n), HELD_OUT_SEED + how.seed,
                    loaded.window)
            phase.tokens = len(ids)
        if not train or (source.kind != "niah" and not held):
            raise RunSkipped(f"self-study: the model wrote {len(train)} training and {len(held)} held-out requests "
                             f"(a request is the first non-empty line it writes); nothing to distil or measure")
        if not found:
            shared.publish_self_study(self.shared_dir, ids, train, held, phase.seconds, ctx.out_dir)
        ctx.info["self_study"] = {**how.model_dump(), "requests": len(train), "held_out_requests": len(held),
                                  "file": save_requests(ctx.out_dir, train, held),
                                  **({"shared_from": found["run_id"]} if found else {})}
        held_texts, answers, groups = [r["text"] for r in held], None, None
        if source.kind == "niah":  # the needle questions, asked as the requests are
            found = niah_inputs(ctx.spec, as_turns=True)
            held_texts, answers, groups = found.texts, found.answers, found.groups
        self.held_answers, self.held_groups = answers, groups
        if ReplyJudging.wanted(settings, answers):
            plain = not getattr(tok, "chat_template", None)
            self.judging = ReplyJudging(settings, ctx.config_dir, answers, plain, "qa" if answers else None)
        turns = user_turn_texts(source, tok, [r["text"] for r in train] + held_texts, template=True)
        return turns[:len(train)], [-1] * len(train), turns[len(train):]

    def items(self, ctx: RunContext, loaded) -> list[TrainItem]:
        """Score every input with the teacher once; training items carry the index of their targets."""
        check_causal(loaded, "teacher")
        if self.settings.serving is not None:  # before any work (self-study, the teacher pass)
            serving.check_budget(self.settings.serving.memory_budget, ctx.loaded.model)
        self.shared_dir = shared.folder(ctx.out_dir, ctx.spec)
        texts, gold, held_texts = self.inputs(ctx, loaded)
        with ctx.costs.phase("teacher") as phase, ctx.compute(loaded), observed_compute(phase, loaded.model):
            check_same_tokenizer(ctx, loaded.tokenizer)
            origin, phase.tokens = self._teacher(ctx, loaded, texts, held_texts)
            if self.shared_from is not None:  # another student's run made the targets
                shared.note(ctx, phase, self.reused, self.shared_from)
            elif self.reused is not None:  # this attempt read the context; an earlier one made the targets
                note_reused(ctx, phase, self.reused.sha256, self.reused.seconds, self.reused.tokens)
        del loaded
        gc.collect()
        return [TrainItem(self.student_ids[j], torch.tensor([float(j), float(gold[i] if i >= 0 else -1)]))
                for j, i in enumerate(origin)]

    def _teacher(self, ctx: RunContext, loaded, texts: list[str], held_texts: list[str]) -> tuple[list[int], int]:
        """The teacher pass; returns each training item's input index (-1: a sampled continuation's) and
        the tokens the teacher read."""
        settings, enc = self.settings, ctx.encoder
        source = parse_context_setting(settings.context, ctx.config_dir)
        text, about = context_text(source, ctx, loaded.tokenizer)
        text = cut_context(enc, text, settings.context_tokens, source)
        self.texts, self.start_ids = texts + held_texts, list(enc.start_ids)
        reads = enc.read_after(text, self.texts)
        if len(reads.context_ids) >= loaded.window:
            raise RunSkipped(f"the context is {len(reads.context_ids)} tokens; the teacher's window is {loaded.window} "
                             f"tokens (no truncation is done)")
        self.prefix = reads.prefix
        self.arms = build_arms(settings.arms or [], enc, text, self.prefix, loaded.window, ctx.config_dir)
        parts, pad, first = lm_parts(loaded.model), loaded.tokenizer.pad_token_id, bool(enc.start_ids)
        fits = [i for i in range(len(reads.suffixes))
                if reads.own(i) and len(reads.prefix) + len(reads.suffixes[i]) <= loaded.window]
        keep, held = [i for i in fits if i < len(texts)], [i for i in fits if i >= len(texts)]
        if not keep:
            hint = (" (with the task's demonstrations as the context only unlabeled inputs are distilled: set "
                    "cd.unlabeled, or give cd.inputs)" if not texts and source.kind == "demonstrations" else "")
            raise ConfigError(f"cd: nothing to distil: {len(texts)} inputs, none fits the teacher's window after the "
                              f"{len(reads.prefix)}-token context{hint}")
        cache = self._cache_and_icl_costs(ctx, loaded, parts, pad, reads, keep, held)
        key = readings_key(ctx.spec.run_id, self.prefix, [(reads.suffixes[i], reads.starts[i]) for i in keep])
        items, targets = self._targets(ctx, loaded, parts, reads, keep, cache, key, source)
        bounds = torch.tensor([0] + [len(x) - b + first for x, b, _ in items]).cumsum(0).tolist()
        self.targets = [targets.rows(a, b) for a, b in zip(bounds, bounds[1:])]
        self.student_ids = [enc.start_ids + x[b:] for x, b, _ in items]
        with ctx.costs.interval("heldout_teacher"):  # evaluation, not part of what distilling costs
            # one frozen copy of the teacher's output layer serves the hidden targets and the held-out states
            head = targets.head if isinstance(targets, HiddenTargets) else None
            if self.judging is not None and self.held_answers is not None:  # those of the inputs that fit
                self.judging.answers = [self.held_answers[i - len(texts)] for i in held]
                self.judging.groups = self.held_groups and [self.held_groups[i - len(texts)] for i in held]
            self._held_out(ctx, loaded, parts, reads, held, cache, head)
        ctx.info["inputs_read_otherwise"] = reads.changed  # own tokens not those of the input read alone
        read = len(self.prefix) + sum(len(x) for x, _, _ in items)
        self._save(ctx, targets, about, reads, items, len(texts) - len(keep), key, read)
        return [i for _, _, i in items], len(self.prefix) if self.reused else read

    def _targets(self, ctx: RunContext, loaded, parts, reads, keep: list[int], cache, key: dict,
                 source) -> tuple[list, object]:
        """The teacher's pass over the distilled inputs (and the continuations it samples): (items, targets);
        or, rerunning a killed attempt that finished it, that attempt's targets (:mod:`.reuse`)."""
        settings, pad, first = self.settings, loaded.tokenizer.pad_token_id, bool(ctx.encoder.start_ids)
        path, meta = lookup(ctx.out_dir, key)
        if path and not meta:  # not this run's: another student's of this sweep
            meta = shared.targets(self.shared_dir, ctx.out_dir, key)
            self.shared_from = meta and meta["run_id"]
        if meta:  # rank 0 found it whole: every rank reads it
            self.reused = found = sequence_targets(path, meta, settings.store, parts, settings.temperature)
            generated = sum(i < 0 for _, _, i in found.items)
            if generated:
                ctx.info.update(generated_inputs=generated, generate=self.generate(source).model_dump())
            return found.items, found.targets
        items = [(reads.suffixes[i], reads.starts[i], i) for i in keep]
        if self.generate(source) is not None:
            items += self._continued(ctx, loaded, cache, items)  # input + teacher-sampled continuation
        with ctx.progress("teacher", len(items)) as advance:
            hidden = predicted_hidden(parts, self.prefix, [x for x, _, _ in items], [b - first for _, b, _ in items],
                                      pad, cache, on_batch=faulting("teacher", advance))
        return items, teacher_targets(parts, hidden, settings.temperature, settings.store, settings.top_k)

    def generate(self, source) -> GenerateSettings | None:
        """``cd.generate`` as it applies: by default a conversation's inputs are continued by the teacher
        (Anthropic's recipe: its replies are sampled with the context and distilled without it); ``false``
        turns it off."""
        g = self.settings.generate
        if g is None:
            return GenerateSettings() if source.kind == "chat" or self.settings.inputs == SELF_STUDY else None
        return g or None

    def _cache_and_icl_costs(self, ctx: RunContext, loaded, parts, pad: int, reads, keep, held) -> PrefixCache | None:
        """The shared prefix's KV cache; with ``cd.query_costs``, the queries to time and -- unless they are
        measured after training with the student (:attr:`together`) -- the ICL paths, timed before the
        teacher's targets exist (their cache then serves the teacher pass)."""
        why_not = loaded.capabilities.prefix_cache or (
            None if self.prefix else "the readings of the inputs share no token prefix with the context")
        encode = None if why_not else (lambda: PrefixCache.encode(parts, self.prefix))
        if self.settings.query_costs:
            first = bool(ctx.encoder.start_ids)
            query = [Query(reads.suffixes[i], reads.own(i), len(reads.own(i)) + first, self.texts[i])
                     for i in held + keep]
            self.meter = QueryCosts(ctx, self.settings.query_costs)
            self.meter.choose(query[:len(held)], query[len(held):])
            self.together = self.settings.teacher is None and ctx.spec.trainable == "lora"
            if not self.together:
                return self.meter.measure(self._icl_paths(parts, pad, why_not)).get(ICL_CACHED) or (
                    encode() if encode else None)
        return encode() if encode else None

    def _icl_paths(self, parts, pad: int, why_not: str | None, view=nullcontext) -> list[QueryPath]:
        """ICL re-reading the context with every query, and ICL with the shared prefix's KV cache; with
        ``cd.arms``, the model without the context and each arm (:func:`.arms.arm_costs`)."""
        prefix = self.prefix
        paths = [QueryPath(ICL, lambda q, _: answer(parts, prefix + q.suffix, q.n, pad), view=view,
                           tokens=lambda q: len(prefix) + len(q.suffix))]
        if why_not:
            self.meter.note(f"icl_cached not measured: {why_not}")
        else:
            paths.append(QueryPath(ICL_CACHED, lambda q, cache: answer(parts, q.suffix, q.n, pad, cache),
                                   setup=lambda: PrefixCache.encode(parts, prefix), view=view,
                                   tokens=lambda q: len(q.suffix)))
        if self.arms:
            paths += arm_costs(self.arms, parts, pad, self.start_ids, self.meter.queries, view)
        return paths

    def _continued(self, ctx: RunContext, loaded, cache, items: list) -> list:
        """``generate.n`` teacher-sampled continuations of each input, as (suffix + continuation, start, -1),
        kept where they fit the window."""
        g = self.generate(parse_context_setting(self.settings.context, ctx.config_dir))
        sampled = continuations(loaded.model, loaded.tokenizer, self.prefix, [x for x, _, _ in items], cache, g.n,
                                g.max_new_tokens, g.temperature, g.seed)
        extra = [(x + c, b, -1) for (x, b, _), c in zip([it for it in items for _ in range(g.n)], sampled)
                 if len(self.prefix) + len(x) + len(c) <= loaded.window]
        ctx.info["generated_inputs"] = len(extra)
        ctx.info["generate"] = g.model_dump()
        return extra

    def _held_out(self, ctx: RunContext, loaded, parts, reads, held: list[int], cache, head: LMParts | None) -> None:
        """The held-out inputs' teacher states, with the teacher's replies, the base model's distance to them,
        and the generations side by side."""
        if not held:
            return
        enc, pad, first = ctx.encoder, loaded.tokenizer.pad_token_id, bool(ctx.encoder.start_ids)
        suffixes, starts = [reads.suffixes[i] for i in held], [reads.starts[i] for i in held]
        own = [reads.own(i) for i in held]
        replies = self._replies(ctx, loaded, cache, suffixes, own)
        hidden = predicted_hidden(parts, self.prefix, [x + r for x, r in zip(suffixes, replies)],
                                  [b - first for b in starts], pad, cache)
        n_input = [len(x) + first for x in own]
        self.held = HeldOut([enc.tokenizer.decode(x) for x in own], [enc.start_ids + x + r for x, r in zip(own, replies)],
                            [len(enc.start_ids) - first] * len(own), n_input, replies, [], head or frozen_head(parts))
        self.held.teacher_hidden = [h[:self.held.rows(i)] for i, h in enumerate(hidden)]
        base_model = ctx.loaded.model  # the student's model before training, without the context
        self.held.base = compare(self.held, lm_parts(base_model), pad)
        if self.judging is not None:
            self.judging.inputs = self.held.texts
            tokenizer = loaded.tokenizer  # not the teacher: it is freed before the student trains
            self.judging.count_tokens = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
            self._judged_replies("base", base_model, loaded.tokenizer)
        self._arms_measured(ctx, loaded, parts, [self.texts[i] for i in held], suffixes, [reads.starts[i] for i in held])
        n = min(self.settings.generations, len(held))
        tok, new = loaded.tokenizer, self.settings.max_new_tokens
        greedy_replies = self._reply_settings() is not None and not self._reply_settings().sample
        teacher = ([tok.decode(r, skip_special_tokens=True) for r in replies[:n]] if greedy_replies else
                   [tok.decode(c, skip_special_tokens=True) for c in continuations(
                       loaded.model, tok, self.prefix, suffixes[:n], cache, 1, new, 1.0, 0, sample=False)])
        self.held.generations = [{"input": self.held.texts[i], "base": greedy(base_model, tok, enc.start_ids + own[i],
                                                                              new), "teacher": teacher[i]}
                                 for i in range(n)]

    def _arms_measured(self, ctx: RunContext, loaded, parts, texts, suffixes, starts) -> None:
        """Each arm's distance to the teacher on the held-out inputs (``method_info.arms``) and, where replies
        are judged, its replies beside the other models'."""
        if not self.arms:
            return
        pad, tok, first = loaded.tokenizer.pad_token_id, loaded.tokenizer, len(self.start_ids) > 0
        rooms = self.judging.room if self.judging is not None else None
        out = {}
        for arm in self.arms:
            rows, replies, tokens = measure_arm(arm, parts, pad, self.held, texts, suffixes, starts, int(first),
                                                rooms, eos_ids(loaded.model, tok))
            out[arm.name] = {"kind": arm.settings.kind, "settings": arm.settings.model_dump(exclude={"kind", "name"}),
                             "tokens_per_query": tokens,
                             "heldout": recovered(self.held.base, compare(self.held, parts, pad, rows))}
            if replies is not None:
                self.judging.add(arm.name, [tok.decode(r, skip_special_tokens=True) for r in replies])
        ctx.info["arms"] = out

    def _judged_replies(self, name: str, model, tokenizer) -> None:
        """A model without the context (the base, the student) writes its greedy reply to every held-out input."""
        held, room = self.held, self.judging.room
        prompts = [ids[:len(ids) - len(r)] for ids, r in zip(held.student_ids, held.replies)]
        self.judging.add(name, greedy_many(model, tokenizer, prompts, room))
        if name == "student":  # what it replied to, special tokens kept: a served student can be asked the same
            self.judging.prompts = [tokenizer.decode(ids, skip_special_tokens=False) for ids in prompts]

    def _reply_settings(self) -> ReplySettings | None:
        replies = self.settings.replies
        return ReplySettings() if replies is None else (replies or None)

    def _replies(self, ctx: RunContext, loaded, cache, suffixes: list[list[int]], own: list[list[int]]) -> list:
        """The teacher's reply to each held-out input (``cd.replies``: greedy by default), at most
        ``cd.max_new_tokens`` tokens, fewer where the teacher's or the student's window ends; [] when off.
        With judged replies (:attr:`judging`) the teacher's greedy ones too (``cd.reply_tokens``): one greedy
        pass gives both where the measured replies are greedy (a greedy reply's first tokens are the shorter one)."""
        how, judging = self._reply_settings(), self.judging
        if how is None and judging is None:
            return [[] for _ in suffixes]
        window = [min(loaded.window - len(self.prefix) - len(x), ctx.loaded.window - len(ctx.encoder.start_ids) - len(o))
                  for x, o in zip(suffixes, own)]
        room = [min(self.settings.max_new_tokens, w) for w in window] if how else [0] * len(suffixes)
        long = [min(judging.tokens, w) for w in window] if judging else [0] * len(suffixes)
        tok = loaded.tokenizer

        def written(limits, sample=False, temperature=1.0, seed=0):
            if not sample:  # greedy: in batches, after the prefix's cache
                seqs = suffixes if cache is not None else [self.prefix + x for x in suffixes]
                return greedy_batch(lm_parts(loaded.model), cache, seqs, limits, eos_ids(loaded.model, tok))
            return continuations(loaded.model, tok, self.prefix, suffixes, cache, 1, limits, temperature, seed,
                                 sample=sample)

        if how is not None and how.sample:
            replies = written(room, True, how.temperature, how.seed)
            judged = written(long) if judging else None
        else:
            both = written([max(r, j) for r, j in zip(room, long)])
            replies, judged = [g[:r] for g, r in zip(both, room)], [g[:j] for g, j in zip(both, long)]
        if judging:
            judging.add("teacher", [tok.decode(r, skip_special_tokens=True) for r in judged])
            judging.room = long
        if how is None:
            return [[] for _ in suffixes]
        ctx.info["heldout_replies"] = [tok.decode(r, skip_special_tokens=True) for r in replies]
        return replies

    def _save(self, ctx: RunContext, targets, about: dict, reads, items: list, dropped: int, key: dict,
              read: int) -> None:
        full = full_bytes_per_position(targets.vocab_size)
        ctx.info.update(about, target="sequence", store=self.settings.store, context_tokens=len(reads.context_ids),
                        shared_prefix_tokens=len(self.prefix), distill_inputs=len(self.targets),
                        distill_dropped=dropped, distill_positions=targets.n_positions,
                        bytes_per_position=targets.bytes_per_position, full_bytes_per_position=full,
                        target_bytes_ratio=round(targets.bytes_per_position / full, 5))
        if isinstance(targets, CompactTargets):
            ctx.info["top_k"] = targets.k
            if targets.clamped:
                ctx.info["top_k_note"] = (f"cd.top_k {targets.requested_k} is larger than the vocabulary "
                                          f"({targets.vocab_size} tokens): all tokens kept")
        if not ctx.out_dir:
            return
        path = os.path.join(ctx.out_dir, TARGETS_FILE)
        ctx.info["teacher_targets"] = path
        if self.reused is not None:  # its hash and cost: :func:`.reuse.note_reused`
            return
        os.makedirs(ctx.out_dir, exist_ok=True)
        if distributed.is_main():  # every rank has the same targets: one writes them
            ids = {**read_ids(self.prefix, [(x[:b], x[b:]) for x, b, _ in items]),
                   "origin": torch.tensor([i for _, _, i in items], dtype=torch.int64)}
            targets.save(path, {"temperature": self.settings.temperature, "inputs": len(self.targets)}, ids)
            seconds = ctx.costs.elapsed()
            sha = ctx.info["teacher_targets_sha256"] = mark_complete(path, key, seconds, read)
            shared.publish_targets(self.shared_dir, path, key, sha, seconds, read, ctx.out_dir)

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
        with cd.query_costs, what a query costs the student (and, measured together with it where the teacher
        is the student's model under a LoRA adapter, the ICL paths), and the break-even counts."""
        self.targets = []  # training is over: they need not weigh on the memory measured from here on
        pad = ctx.loaded.tokenizer.pad_token_id
        if self.held is not None:
            with ctx.costs.phase("heldout"), ctx.compute():
                parts = lm_parts(model.lm)
                how = self._reply_settings()
                about = {"replies": "sampled" if how.sample else "greedy", "max_new_tokens": self.settings.max_new_tokens,
                         **({"temperature": how.temperature, "seed": how.seed} if how.sample else {})} if how else {}
                ctx.info["heldout"] = recovered(self.held.base, compare(self.held, parts, pad), about)
                for i, g in enumerate(self.held.generations):  # the student reads the input alone, no reply
                    ids = self.held.student_ids[i][:len(self.held.student_ids[i]) - len(self.held.replies[i])]
                    g["student"] = greedy(model.lm, ctx.loaded.tokenizer, ids, self.settings.max_new_tokens)
                if self.judging is not None:
                    self._judged_replies("student", model.lm, ctx.loaded.tokenizer)
                    ctx.info["judged"] = self.judging.result()
            ctx.info["generations"] = self.held.generations
            self.held = None
        if self.meter is not None:  # the held-out states are freed: memory as when the ICL paths were timed
            student, start = lm_parts(model.lm), ctx.encoder.start_ids
            setup = sum(p.seconds + p.extra.get("seconds_before_resume", 0.0) + p.extra.get("seconds_shared", 0.0)
                        for p in ctx.costs.phases if p.name in DISTILL_PHASES)  # what one uninterrupted run would cost
            paths = [QueryPath(DISTILLED, lambda q, _: answer(student, start + q.own, q.n, pad), setup_seconds=setup,
                               tokens=lambda q: len(start) + len(q.own))]
            if self.together:  # the teacher is this model with its adapters off
                why_not = ctx.loaded.capabilities.prefix_cache or (
                    None if self.prefix else "the readings of the inputs share no token prefix with the context")
                paths = self._icl_paths(student, pad, why_not, view=model.lm.disable_adapter) + paths
            with ctx.compute():
                self.meter.measure(paths)
            self.meter.finish()
            if self.settings.serving is not None:
                self._serving(ctx, model, pad)

    def _serving(self, ctx: RunContext, model: nn.Module, pad: int) -> None:
        """``method_info.serving``: many users at once (:mod:`.serving`), the last thing the run measures."""
        if self.settings.teacher is not None or ctx.spec.trainable not in ("lora", "cartridge"):
            ctx.info["serving"] = {"note": "cd.serving is measured where the student is a LoRA adapter or a "
                                           "cartridge on the teacher's own model"}
            return
        with ctx.costs.phase("serving"), ctx.compute():
            ctx.info["serving"] = serving.measure(self.settings.serving, self.meter.queries, model.lm, pad,
                                                  self.prefix, ctx.encoder.start_ids, self.arms or [],
                                                  ctx.loaded.device)
