"""The result record of a run, as a typed schema: what a record holds, and the one place its key names live.

Every reader of records -- the console line and tables, ``show``, the report's tables and figures, the
trackers, ``load_results`` -- reads them through :func:`load_record` and these classes, so renaming a field
breaks a test, not silently a report column.  ``method_info`` is typed per method: the method's class names
its info class (``Method.info``; fields every run has are in :class:`MethodInfo`).  Records written before
the schema had a version (``schema_version`` absent) have the same shape and load alike; fields added since
are None there.  The tables of docs/results.md are generated from these classes.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from ..methods.base import METHODS, MethodInfo, RecordPart as _Part

#: Bump when a field changes its meaning or shape (readers then know which records they hold).
SCHEMA_VERSION = 1


class Writer(_Part):
    host: str | None = Field(None, description="host name of the process that ran the run")
    pid: int | None = Field(None, description="its process id")
    started: float | None = Field(None, description="its start time (epoch seconds): host + pid + start name it")


class Phase(_Part):
    name: str | None = Field(None, description="the phase (load_model, setup, train, encode_context, predict:<set>)")
    seconds: float = Field(0.0, description="wall seconds of the phase (intervals inside it left out)")
    peak_memory_bytes: int = Field(0, description="CUDA allocator peak on a GPU, else the process' peak RSS, reset "
                                                  "at the phase's start")
    peak_rss_bytes: int | None = Field(None, description="the process' peak resident set during the phase")
    peak_rss_scope: str | None = Field(None, description="phase, or process where the peak could not be reset")
    peak_cuda_bytes: int | None = Field(None, description="the CUDA allocator's peak, on a GPU")
    tokens: int | None = Field(None, description="real tokens run through the model")
    padded_tokens: int | None = Field(None, description="positions computed, padding included")
    tokens_per_second: float | None = Field(None, description="tokens / seconds")
    weights_dtype: str | None = Field(None, description="the weights' dtype in this phase")
    compute_dtype: str | None = Field(None, description="what the matmuls ran in (observed where recorded)")
    ranks: dict[str, Any] | None = Field(None, description="a multi-process launch: n, peak_memory_bytes_max, "
                                         "peak_memory_bytes_sum, seconds_max over the ranks")
    extra: dict[str, Any] = Field(default_factory=dict, description="what else the phase measured (cache bytes, "
                                  "steps, excluded_seconds of its intervals, count of folded intervals)")


class SliceMetrics(_Part):
    n: int = Field(0, description="examples scored")
    n_unscored: int | None = Field(None, description="examples left out: they did not fit the window (all slice)")
    accuracy: float | None = Field(None, description="share of correct predictions")
    mcc: float | None = Field(None, description="Matthews correlation (CoLA)")
    f1: float | None = Field(None, description="F1 of the positive class (QQP, PAWS)")


class EvalSetInfo(_Part):
    in_domain: bool = Field(False, description="the task's own validation split")
    origin: str | None = Field(None, description="the file read, or hub:<dataset>...@<commit>")
    n: int = Field(0, description="examples of the set (after filter and subsample)")
    n_unscored: int = Field(0, description="examples left out of its metrics (too long)")
    max_examples: int | None = Field(None, description="the subsample asked for")
    where: dict[str, list[str]] = Field(default_factory=dict, description="the rows kept: field -> values")


class ModelInfo(_Part):
    name: str = Field("", description="as the config names it")
    source: str = Field("", description="where the weights came from (a folder, a GGUF file, api:<url>/<name>)")
    dtype: str = Field("", description="the weights' dtype")
    device: str = Field("", description="where it ran")
    window: int = Field(0, description="the longest prompt it reads, in tokens")
    n_params: int = Field(0, description="parameters (an api model: 0)")
    pad_token_from: str | None = Field(None, description="the special token used as pad, if the tokenizer had none")
    architecture: str | None = Field(None, description="the transformers class")
    commit: str | None = Field(None, description="the hub commit the weights were downloaded at")
    api: str | None = Field(None, description="an api model: the API it speaks (openai-completions)")
    base_url: str | None = Field(None, description="an api model: the endpoint (None: OpenAI's)")
    model_type: str | None = Field(None, description="the config's model_type (opt, llama, t5, ...)")
    encoder_decoder: bool | None = Field(None, description="an encoder-decoder model (T5, BART)")


class RunRecord(_Part):
    schema_version: int = Field(0, description="the record's schema (0: written before it had a version)")
    run_id: str = Field(description="the hash of the run's identity (spec)")
    sweep: str | None = Field(None, description="the sweep that wrote it")
    status: str = Field(description="ok, skipped or failed")
    reason: str | None = Field(None, description="why it was skipped or failed")
    traceback: str | None = Field(None, description="a crash's traceback")
    failed_rank: int | None = Field(None, description="the rank that failed first, under a multi-process launch")
    spec: dict[str, Any] = Field(description="what was run: the run's identity (spec_version, model, task, "
                                 "method, shots, seeds, settings blocks, resolved)")
    started_at: str | None = None
    finished_at: str | None = None
    writer: Writer = Field(default_factory=Writer, description="the process that ran it")
    task: dict[str, Any] = Field(default_factory=dict, description="name, labels, label_space")
    sample: dict[str, Any] = Field(default_factory=dict, description="shots, data_seed, idx of the examples, "
                                   "label_counts")
    prompt: dict[str, Any] = Field(default_factory=dict, description="pattern, target_prefix, separator, "
                                   "verbalizer, instruction, label_token_ids, label_tokens")
    model: ModelInfo | None = Field(None, description="the model as loaded")
    method_info: MethodInfo = Field(default_factory=MethodInfo, description="what the method did and measured "
                                    "(typed per method: Method.info)")
    metrics: dict[str, dict[str, SliceMetrics]] = Field(default_factory=dict, description="eval set -> slice "
                                                        "(all, label=..., heuristic=...) -> metrics")
    eval_sets: dict[str, EvalSetInfo] = Field(default_factory=dict, description="eval set -> what was scored")
    eval_sets_unavailable: dict[str, str] = Field(default_factory=dict, description="default eval sets that could "
                                                  "not be loaded -> why")
    costs: dict[str, Phase] = Field(default_factory=dict, description="phase -> seconds, peak memory, tokens")
    environment: dict[str, Any] = Field(default_factory=dict, description="versions, git commit, device, threads, "
                                         "the CPU's bfloat16 instructions (cpu_bf16)")
    predictions: dict[str, Any] = Field(default_factory=dict, description="rows and SHA-256 of predictions.jsonl")

    @property
    def total_seconds(self) -> float:
        """The run's wall seconds: every phase's."""
        return sum(p.seconds for p in self.costs.values())

    @property
    def peak_memory_bytes(self) -> int:
        """The run's peak memory: the largest phase peak."""
        return max((p.peak_memory_bytes for p in self.costs.values()), default=0)

    @property
    def task_name(self) -> str:
        task = self.spec.get("task")
        return task if isinstance(task, str) else (task or {}).get("name", "")

    @model_validator(mode="before")
    @classmethod
    def _method_info(cls, data):
        """``method_info`` as its method's info class (a method this installation does not know: the base)."""
        if isinstance(data, dict) and isinstance(data.get("method_info"), dict):
            method = METHODS.get((data.get("spec") or {}).get("method"))
            info_class = method.info if method is not None else MethodInfo
            data = {**data, "method_info": info_class.model_validate(data["method_info"])}
        return data


def load_record(data: dict | RunRecord) -> RunRecord:
    """A record as the schema reads it (a record already read is returned as it is)."""
    return data if isinstance(data, RunRecord) else RunRecord.model_validate(data)


def unknown_keys(model: BaseModel, where: str = "") -> list[str]:
    """Keys a record holds that its schema does not name (``extra``), recursively: a writer that adds a key
    without adding it to the schema is caught by the contract test."""
    found = [f"{where}{k}" for k in (model.model_extra or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, BaseModel):
                found += unknown_keys(item, f"{where}{name}.")
            elif isinstance(item, dict):
                found += [k for v in item.values() if isinstance(v, BaseModel)
                          for k in unknown_keys(v, f"{where}{name}.")]
    return found
