"""Settings blocks of a config (``model``, ``icl:``, ``train:``, ``lora:``, ``bitfit:``, ``cd:``), with help text.

A block becomes part of a run's spec (and id) only for the runs it applies to: changing ``lora.r``
does not change the id of an ICL run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


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
        "auto", description="auto: bfloat16 on CUDA (float16 on older GPUs); float32 on CPU, or bfloat16 "
                        "with ADAPTBENCH_CPU_BF16=1 where the CPU has AMX or AVX512-BF16")
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


# Sweep presets fill the settings a config leaves unset (a config's own values win).  "reference" is the
# reference study's choices (Mosbach et al., 2023; uds-lsv/llmft) wherever adaptbench offers them; what
# it cannot reproduce is listed in the README ("Where adaptbench differs from the reference").
SWEEP_PRESETS: dict[str, dict] = {
    "reference": {"train": {"preset": "reference"}, "pbft": {"loss": "vocab"}, "vanilla": {"head": "mlp"},
                  "prompt": "minimal"},
    "adaptbench": {},
}


