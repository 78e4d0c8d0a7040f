"""Settings blocks of a config (``model``, ``icl:``, ``train:``, ``lora:``, ``bitfit:``, ``cd:``), with help text.

A block becomes part of a run's spec (and id) only for the runs it applies to: changing ``lora.r``
does not change the id of an ICL run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt,
                      model_validator)


class Strict(BaseModel):
    """Unknown fields are errors, and no value is coerced into another type: ``shots: true`` is not 1, ``balanced:
    "no"`` is not false (a float field takes an integer, nothing else)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ModelSpec(Strict):
    name: str = Field(description="hub id, local folder, .gguf file, or an alias (adaptbench models)")
    gguf_file: str | None = Field(None, description="GGUF file inside a hub repo or folder")
    tokenizer: str | None = Field(None, description="tokenizer source, if not the model's")
    revision: str | None = Field(None, description="hub revision (branch, tag or commit)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 (or float16) on CUDA, float32 on CPU")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    trust_remote_code: bool = False
    api: Literal["openai-completions"] | None = Field(
        None, description="a model behind an HTTP API (OpenAI, vLLM, llama.cpp servers): name is the server's "
                          "model name; it runs icl and serves as a cd.teacher (labels target)")
    base_url: str | None = Field(None, description="api: the endpoint, e.g. http://localhost:8080/v1 (default: "
                                                   "OpenAI's)")
    # api-only fields default to None (not the values they stand for): a local model's spec, and so its
    # run ids, stay as they were
    api_key_env: str | None = Field(None, description="api: the environment variable that holds the key "
                                                      "(default OPENAI_API_KEY)")
    top_logprobs: PositiveInt | None = Field(None, description="api: log-probabilities asked for per request "
                                                               "(default 5, OpenAI's completions maximum); a "
                                                               "verbalizer outside them is floored")

    @model_validator(mode="after")
    def _api_fields(self):
        if self.base_url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.base_url)
            if parts.query or parts.fragment:
                raise ValueError("base_url must not carry a query string or fragment (the openai client drops or "
                                 "mangles it, and a key there would be written wherever the URL is); put the key in "
                                 "the environment variable named by api_key_env")
            if parts.password:
                from .._util.secrets import register_credentials

                register_credentials(parts.username or "", parts.password)  # records show ***@host
        local = ("gguf_file", "tokenizer", "revision")
        remote = [f for f in ("base_url", "api_key_env", "top_logprobs") if getattr(self, f) is not None]
        if self.api is not None:
            given = [f for f in local if getattr(self, f) is not None] + (["trust_remote_code"] if
                                                                         self.trust_remote_code else [])
            if given:
                raise ValueError(f"{', '.join(given)}: for local weights; an api model has none")
        elif remote:
            raise ValueError(f"{', '.join(remote)}: for api models; set api: openai-completions")
        return self


class ICLSettings(Strict):
    prefix_cache: bool = Field(True, description="encode the demonstrations once and reuse their KV cache")


# Presets fill the fields a config leaves unset.  "reference": the hyper-parameters of the reference
# study (Mosbach et al., 2023: lr 1e-5, 40 epochs, 10% warmup then linear decay, batch 32, evaluated
# every epoch).  "cpu-fast": a few quick epochs at a higher rate, for trying things on a laptop.
TRAIN_PRESETS: dict[str, dict] = {
    "reference": {"lr": 1e-5, "epochs": 40, "warmup_ratio": 0.1, "batch_size": 32, "schedule": "linear",
                  "weight_decay": 0.0, "eval_every": "epoch"},
    "cpu-fast": {"lr": 1e-4, "epochs": 4, "warmup_ratio": 0.1, "batch_size": 8, "schedule": "constant",
                 "weight_decay": 0.0, "eval_every": "end"},
}


class TrainSettings(Strict):
    """The one training loop's knobs (pbft, vanilla, cd)."""

    preset: Literal["reference", "cpu-fast"] | None = Field(
        None, description="fill unset fields from a preset: reference (the study's) or cpu-fast")
    epochs: PositiveInt = Field(40, description="passes over the few-shot sample")
    max_steps: PositiveInt | None = Field(None, description="optimizer steps; overrides epochs")
    batch_size: PositiveInt = Field(32, description="examples per optimizer step (before accumulation)")
    grad_accum: PositiveInt = Field(1, description="micro-batches per optimizer step; lowers memory")
    lr: PositiveFloat = 1e-5
    weight_decay: NonNegativeFloat = 0.0
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0, description="share of steps with linear warmup")
    schedule: Literal["constant", "linear"] = Field("linear", description="after warmup: constant or linear decay")
    max_grad_norm: PositiveFloat | None = Field(1.0, description="gradient clipping; null disables it")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast through accelerate; bf16 halves activation memory on recent GPUs")
    eval_every: Literal["end", "epoch"] | PositiveInt = Field(
        "end", description="evaluate all eval sets at the end only, every epoch, or every N steps "
                           "(learning curves in the record)")
    select: Literal["last", "best", "oracle"] = Field(
        "last", description="which evaluation point is reported: last (as the reference study), best "
                            "in-domain accuracy, or best mean OOD accuracy (an oracle, reported as such)")
    freeze_embeddings: bool = Field(False, description="keep token/position embeddings (and a tied LM head) fixed")
    save: bool = Field(False, description="save the adapted weights in the run folder")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset"):
            preset = TRAIN_PRESETS.get(data["preset"])
            if preset is not None:
                data = {**preset, **data}
        return data

    @model_validator(mode="after")
    def _selection_needs_points(self):
        if self.select != "last" and self.eval_every == "end":
            raise ValueError(f"select: {self.select} needs evaluation points: set eval_every to epoch or N steps")
        return self


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


class PBFTSettings(Strict):
    """Pattern-based fine-tuning."""

    loss: Literal["verbalizer", "vocab"] = Field(
        "verbalizer", description="verbalizer: cross-entropy over the verbalizer tokens' logits (the classes the "
                                  "prediction chooses between); vocab: over the whole vocabulary with the gold "
                                  "verbalizer token as target, as the reference study (its OPTWithLMClassifier)")


class VanillaSettings(Strict):
    """Vanilla fine-tuning's new classification head."""

    head: Literal["linear", "mlp"] = Field(
        "linear", description="linear: one layer on the last token's hidden state; mlp: dense -> ReLU -> dropout "
                              "-> output, the reference study's default ClassificationHead")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="dropout inside the mlp head (the reference: OPT's 0.1)")
    pooling: Literal["decoder_first", "encoder_mean"] | None = Field(
        None, description="encoder-decoder models only (T5, BART): the head reads the decoder's first hidden state "
                          "(decoder_first, the default) or the mean of the encoder's states over the input's real "
                          "tokens (encoder_mean); decoder-only models always use the last token's state, and "
                          "setting it for them is an error")


# Sweep presets fill the settings a config leaves unset (a config's own values win).  "reference" is the
# reference study's choices (Mosbach et al., 2023; uds-lsv/llmft) wherever adaptbench offers them; what
# it cannot reproduce is listed in the README ("Where adaptbench differs from the reference").
SWEEP_PRESETS: dict[str, dict] = {
    "reference": {"train": {"preset": "reference"}, "pbft": {"loss": "vocab"}, "vanilla": {"head": "mlp"},
                  "prompt": "minimal"},
    "adaptbench": {},
}


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


class CDSettings(Strict):
    """Context distillation: a teacher with the context, a student without it."""

    teacher: ModelSpec | None = Field(None, description="teacher model; default: the student's model. May be "
                                                        "larger, or of another family with another tokenizer")
    context: str = Field("demonstrations", description="demonstrations (the data seed's k-shot sample, as "
                                                       "in ICL), file:PATH (any text: a document, a code file) "
                                                       "or chat:PATH (a conversation, JSONL of role/content turns)")
    unlabeled: NonNegativeInt = Field(0, description="extra inputs from the train pool (not the context's), "
                                                      "distilled without gold labels")
    target: Literal["labels", "vocab", "sequence"] = Field(
        "labels", description="labels: the verbalizer distribution at the answer position (works across "
                              "tokenizers); vocab: the full next-token distribution there; sequence: the full "
                              "next-token distribution at every token of every input (Askell et al., 2021)")
    inputs: str | None = Field(None, description="sequence targets: a .jsonl (text field, or chat turns whose "
                                                 "user turns are the inputs) or .txt (one paragraph each) file "
                                                 "of inputs; default: the task's few-shot sample and unlabeled "
                                                 "inputs")
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

    @model_validator(mode="after")
    def _sequence_fields_need_sequence_target(self):
        """A setting that the chosen target ignores is a mistake in the config, not something to drop silently."""
        if self.target != "sequence":
            ignored = [f for f in SEQUENCE_ONLY if f in self.model_fields_set and getattr(self, f) is not None]
            if ignored:
                raise ValueError(f"cd.{ignored[0]} applies to cd.target: sequence only (this target is "
                                 f"{self.target!r}); remove it or set target: sequence")
        elif self.store == "hidden" and "top_k" in self.model_fields_set:
            raise ValueError("cd.top_k applies to cd.store: topk (store: hidden keeps the whole distribution)")
        return self


#: CD settings that only sequence targets read.
SEQUENCE_ONLY = ("inputs", "held_out", "top_k", "store", "generate", "generations", "max_new_tokens", "context_tokens",
                 "query_costs", "replies")
