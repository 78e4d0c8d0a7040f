"""What a context-distillation run records (``method_info``), typed: the teacher, the inputs distilled, and
for sequence targets what the student recovered (:mod:`.heldout`) and what a query costs (:mod:`.query_costs`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from ..base import RecordPart
from ..finetune import FineTuneInfo


class Recovered(RecordPart):
    """One held-out measure: both KLs, the share of the context's effect recovered, top-1 agreements."""

    kl_student: float | None = Field(None, description="mean per-position KL(teacher with C || student), nats")
    kl_base: float | None = Field(None, description="mean per-position KL(teacher with C || base model without C)")
    recovered: float | None = Field(None, description="1 - kl_student / kl_base: the share of the context's effect")
    top1_agreement_student: float | None = Field(None, description="share of positions where the student's most "
                                                 "likely token is the teacher's")
    top1_agreement_base: float | None = Field(None, description="the same for the base model")
    positions: int | None = Field(None, description="positions measured")


class Reply(Recovered):
    """The measure on the teacher's replies to the held-out inputs, teacher-forced."""

    replies: str | None = Field(None, description="greedy or sampled")
    max_new_tokens: int | None = Field(None, description="their length at most")
    temperature: float | None = Field(None, description="sampled replies: the temperature")
    seed: int | None = Field(None, description="sampled replies: the seed")


class HeldOut(Recovered):
    """At the held-out inputs' positions, and (``reply``) on the teacher's replies to them."""

    reply: Reply | None = Field(None, description="the same measures where the reply's tokens are predicted")


class PathCost(RecordPart):
    """What answering a query costs on one path of the cost curve."""

    per_query_seconds: float = Field(description="median over the timed queries (the paths taking turns)")
    mean_seconds: float | None = Field(None, description="their mean")
    seconds: list[float] = Field(default_factory=list, description="every timed query's seconds")
    n: int = Field(0, description="queries timed")
    peak_memory_bytes: int = Field(0, description="the peak while answering the longest query, with only this "
                                                  "path's own state resident")
    resident_bytes: int | None = Field(None, description="what was resident just before (before its state)")
    setup_seconds: float = Field(0.0, description="its one-off cost: none, the context's encoding, distillation")
    tokens_per_query: float | None = Field(None, description="tokens a query reads on this path")
    peak_memory_query_tokens: int | None = Field(None, description="tokens of the query the peak was measured on")
    state_bytes: int | None = Field(None, description="bytes of the state the path keeps resident (a KV cache, "
                                    "from its tensors' shapes; None: no tensor state)")


class ArmMeasured(RecordPart):
    """An arm of ``cd.arms`` on the held-out inputs: its settings, the tokens it reads, its distance to the teacher."""

    kind: str = Field(description="truncate, rag or kv_compressed")
    tokens_per_query: float | None = Field(None, description="mean tokens read per held-out input (a cache's included)")
    heldout: HeldOut | None = Field(None, description="KL(teacher || arm) and the share of the context's effect "
                                    "kept (kl_student, recovered: the arm's)")
    settings: dict[str, Any] = Field(default_factory=dict, description="the arm's settings")


class Estimate(RecordPart):
    """A share (pass rate, exact match) or a mean score (F1), with its n and 95 % interval."""

    value: float | None = Field(None, description="the share or mean (None: nothing to judge)")
    n: int = Field(0, description="held-out replies judged")
    k: int | None = Field(None, description="a share: replies that passed")
    ci95: list[float] | None = Field(None, description="95 % interval [low, high]")
    interval: str | None = Field(None, description="wilson (shares) or bootstrap (means)")


class Judged(RecordPart):
    """The held-out replies of the base model, the teacher and the student, judged by the behaviour checks
    and (a question file) the gold answers."""

    reply_tokens: int | None = Field(None, description="greedy reply length at most (cd.reply_tokens)")
    stop: list[str] = Field(default_factory=list, description="a reply ends before the first of these")
    reply_tokens_mean: dict[str, float] | None = Field(None, description="per model: the judged replies' mean "
                                                       "length in tokens (the reply as cut, tokenized again)")
    n: int = Field(0, description="held-out inputs")
    groups: dict[str, dict[str, dict[str, dict[str, Estimate]]]] | None = Field(
        None, description="answers per group of inputs (a haystack's needle depth): {'depth': {'0.5': {metric: "
                          "{model: estimate}}}}")
    checks: dict[str, dict[str, Estimate]] | None = Field(None, description="per check label (and 'all checks'), "
                                                          "per model (base, teacher, student, each arm): the pass "
                                                          "rate")
    answer_kind: str | None = Field(None, description="qa (question files, niah) or code (next-line completion)")
    answers: dict[str, dict[str, Estimate]] | None = Field(None, description="per model: qa -- exact_match, contains "
                                                           "(shares), f1 (mean), SQuAD-normalised; code -- "
                                                           "exact_match (share), edit_similarity (mean)")
    replies: list[dict[str, Any]] = Field(default_factory=list, description="input, the prompt a model without the "
                                          "context replied to (special tokens kept), each model's reply, the checks "
                                          "each failed, gold answers and scores, side by side")


class CDInfo(FineTuneInfo):
    """``method_info`` of a context-distillation run."""

    teacher: str | None = Field(None, description="where the teacher's weights came from (or its endpoint)")
    teacher_dtype: str | None = Field(None, description="the teacher's dtype (None: a model behind an API)")
    context: str | None = Field(None, description="demonstrations, file or chat")
    context_file: str | None = Field(None, description="the context's file")
    niah: dict[str, Any] | None = Field(None, description="cd.context: niah: the needles (place, number, depth) "
                                        "and the haystack")
    chat_rendering: str | None = Field(None, description="chat_template or plain")
    chat_turns: int | None = Field(None, description="turns of the conversation")
    context_tokens: int | None = Field(None, description="the context's tokens, read alone")
    leave_one_out: bool | None = Field(None, description="labelled inputs scored without their own demonstration")
    distill_labelled: int | None = Field(None, description="labelled inputs distilled")
    distill_unlabelled: int | None = Field(None, description="unlabelled inputs distilled")
    distill_dropped: int | None = Field(None, description="inputs left out: too long for the teacher's window")
    teacher_targets: str | None = Field(None, description="the file of the teacher's targets (and the ids it read)")
    teacher_targets_sha256: str | None = Field(None, description="that file's SHA-256")
    teacher_reused: dict | None = Field(None, description="a killed attempt's targets reused instead of running the "
                                        "teacher again: the seconds and tokens of the pass that made them")
    teacher_shared: dict | None = Field(None, description="targets another student's run of the sweep made "
                                        "(same teacher key): its run id, the seconds and tokens of its pass")
    teacher_metrics: dict[str, dict] | None = Field(None, description="cd.teacher_eval: the teacher's ICL metrics")
    agreement: dict[str, dict] | None = Field(None, description="cd.teacher_eval: student-teacher agreement")
    api_usage: dict[str, Any] | None = Field(None, description="an api teacher: requests, tokens, cost")
    teacher_api_missing: dict[str, dict] | None = Field(None, description="an api teacher: per input set, inputs "
                                                        "whose verbalizer token was not in the top-N returned")
    # sequence targets
    target: str | None = Field(None, description="sequence (else the answer position: cd.target)")
    store: str | None = Field(None, description="hidden or topk: how the teacher's targets are kept")
    top_k: int | None = Field(None, description="store topk: tokens kept per position")
    top_k_note: str | None = Field(None, description="why top_k was clamped")
    shared_prefix_tokens: int | None = Field(None, description="the token prefix all readings share (the cache's)")
    inputs_read_otherwise: int | None = Field(None, description="inputs whose own tokens differ from the input "
                                              "read alone (whitespace merged at the seam)")
    split: dict[str, Any] | None = Field(None, description="cd.inputs: seed, held_out, n_train, n_held_out, "
                                         "held_out_indices")
    distill_inputs: int | None = Field(None, description="inputs distilled (continuations included)")
    distill_positions: int | None = Field(None, description="positions distilled")
    generate: dict[str, Any] | None = Field(None, description="the continuations sampled from the teacher")
    generated_inputs: int | None = Field(None, description="continuations distilled")
    bytes_per_position: int | None = Field(None, description="storage of one position's target")
    full_bytes_per_position: int | None = Field(None, description="a full float32 distribution's")
    target_bytes_ratio: float | None = Field(None, description="their ratio")
    heldout: HeldOut | None = Field(None, description="what the student recovered on held-out inputs")
    heldout_replies: list[str] | None = Field(None, description="the teacher's replies to the held-out inputs")
    generations: list[dict[str, str]] | None = Field(None, description="input, base, teacher, student side by side")
    judged: Judged | None = Field(None, description="cd.checks / a question file: the held-out replies judged")
    arms: dict[str, ArmMeasured] | None = Field(None, description="cd.arms: each arm on the held-out inputs")
    query_costs: dict[str, PathCost] | None = Field(None, description="cd.query_costs: icl, icl_cached, distilled, "
                                                    "and with cd.arms no_context and each arm")
    query_costs_inputs: str | None = Field(None, description="held_out or distilled: where the timed queries came from")
    query_costs_queries: list[str] | None = Field(None, description="the timed queries, in the order every path "
                                                  "answered them")
    query_costs_interleaved: list[list[str]] | None = Field(None, description="the paths that took turns, by group")
    query_costs_notes: list[str] | None = Field(None, description="what could not be measured, and why")
    serving: dict[str, Any] | None = Field(None, description="cd.serving: batch_sizes, threads, device, "
                                           "memory_budget_bytes and per path and regime (shared, per_user) the "
                                           "throughput per batch, memory per user measured and from shapes, and "
                                           "the users within the budget (adaptbench.measure.serving)")
    break_even: dict[str, float | None] | None = Field(None, description="vs_icl, vs_icl_cached: queries from which "
                                                       "on distilling costs no more in total (None: never)")
