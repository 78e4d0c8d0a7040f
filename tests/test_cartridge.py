"""A KV-prefix (cartridge) student through PEFT's CartridgeConfig: its forward is the base model reading after
the prefix, it trains, saves as a PEFT adapter and is judged like any student."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from torch import nn

from adaptbench.errors import ConfigError
from adaptbench.models.cartridge import CartridgeBackbone, generate, initialize_from_ids
from adaptbench.models.interface import lm_parts
from adaptbench.models.loading import load_model
from adaptbench.training.policies import CartridgeSettings, apply_policy

from .test_cd import sharp_llama  # noqa: F401  (fixture)
from .test_cd_sequence import CONTEXT, _config, _files
from .test_run import _records, _run


class _Task(nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm, self.head = lm, None


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_a_prefix_from_a_text_reads_as_that_text(tiny_models, tokenizer, arch):
    """Initialised from text T, the cartridge's hidden states on x are the base model's on T[:p] + x (the
    definition of a KV prefix), for right-padded batches and packed-style position ids alike; only the
    non-sink positions train; greedy generation continues T[:p] + x."""
    loaded = load_model(tiny_models[arch])
    base = loaded.model
    ids = tokenizer(CONTEXT)["input_ids"]
    xs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("The report was late.", "Two dogs run.")]
    task = _Task(base)
    info = apply_policy(task, "cartridge", cartridge=CartridgeSettings(num_virtual_tokens=6))
    initialize_from_ids(task.lm, ids)
    parts = lm_parts(task.lm)
    assert isinstance(parts.backbone, CartridgeBackbone)
    kv = base.config.num_key_value_heads if hasattr(base.config, "num_key_value_heads") else base.config.num_attention_heads
    kv_dim = kv * base.config.hidden_size // base.config.num_attention_heads
    assert info["trainable_params"] == 5 * base.config.num_hidden_layers * 2 * kv_dim  # the sink is frozen
    assert info["trainable_bytes"] == 6 * base.config.num_hidden_layers * 2 * kv_dim * 4
    n = max(map(len, xs))
    batch = torch.tensor([x + [0] * (n - len(x)) for x in xs])
    mask = torch.tensor([[1] * len(x) + [0] * (n - len(x)) for x in xs])
    with torch.no_grad():
        got = parts.backbone(input_ids=batch, attention_mask=mask).last_hidden_state
        for i, x in enumerate(xs):
            want = lm_parts(base).backbone(input_ids=torch.tensor([ids[:6] + x])).last_hidden_state[0, 6:]
            assert torch.allclose(got[i, :len(x)], want, atol=1e-5)
        step = parts.backbone(input_ids=torch.tensor([xs[0]]), attention_mask=torch.ones(1, len(xs[0]), dtype=torch.long),
                              position_ids=torch.arange(len(xs[0]))[None]).last_hidden_state
        assert torch.allclose(step[0], got[0, :len(xs[0])], atol=1e-5)
    out = base.generate(input_ids=torch.tensor([ids[:6] + xs[0]]), max_new_tokens=4, do_sample=False,
                        pad_token_id=tokenizer.pad_token_id)
    assert generate(task.lm, tokenizer, xs[0], 4, parts.cache_kwarg) == out[0, 6 + len(xs[0]):].tolist()


def test_bad_cartridge_settings_are_clear(tiny_models):
    loaded = load_model(tiny_models["llama"])
    with pytest.raises(ConfigError, match="not below the model's window"):
        apply_policy(_Task(loaded.model), "cartridge", cartridge=CartridgeSettings(num_virtual_tokens=2048))
    with pytest.raises(ValueError, match="greater than 0"):
        CartridgeSettings(num_virtual_tokens=0)


def test_a_cartridge_student_distils_a_document(tmp_path, data_dir, sharp_llama):  # noqa: F811
    """cd with trainable: cartridge: initialised from the context, trained on the KL, measured on held-out
    inputs; saved as a PEFT adapter that PeftModel loads back to the same forward."""
    _files(tmp_path)
    cd = "context: 'file:context.txt', inputs: inputs.jsonl, held_out: 3, max_new_tokens: 4, generations: 1"
    config = _config(sharp_llama, cd).replace("trainable: full", "trainable: cartridge").replace(
        "max_steps: 40", "max_steps: 15").replace("train: {", "train: {save: true, ") + \
        "cartridge: {num_virtual_tokens: 8, lr: 0.05}\n"
    result = _run(tmp_path, data_dir, config)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["policy"] == "cartridge" and info["num_virtual_tokens"] == 8 and info["cartridge_init"] == "context"
    assert info["packed_batches"] is False and "cartridge" in info["capabilities_off"]["packing"]
    assert "own trained KV prefix" in info["capabilities_off"]["prefix_cache"]
    held = info["heldout"]
    assert held["kl_student"] < held["kl_base"] and info["train_losses"][-1] < info["train_losses"][0]
    assert set(info["generations"][0]) == {"input", "base", "teacher", "student"}
    model = PeftModel.from_pretrained(load_model(sharp_llama).model, info["saved"]["cartridge_adapter"])
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # what adaptbench computes is what PEFT's own forward computes with the saved adapter
        mine = lm_parts(model).backbone(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state
        theirs = model(input_ids=x, attention_mask=torch.ones_like(x), output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(mine, theirs, atol=1e-5)




def test_pbft_with_a_cartridge_starts_from_the_demonstrations(tmp_path, data_dir, tiny_models):
    """A cartridge for PBFT: initialised from the 8-shot sample rendered as ICL's context, it starts as ICL."""
    from .test_finetune import _ft_config

    config = _ft_config(tiny_models["llama"], "trainable: cartridge\ncartridge: {num_virtual_tokens: 16}\n")
    result = _run(tmp_path, data_dir, config)
    assert result.exit_code == 0, result.output
    [rec] = _records(tmp_path)
    assert rec["status"] == "ok", rec.get("reason")
    info = rec["method_info"]
    assert info["cartridge_init"] == "context" and info["num_virtual_tokens"] == 16 and rec["metrics"]["rte"]["all"]["n"] == 10
