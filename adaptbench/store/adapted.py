"""Use what you adapted (issue 29): a finished run's adapted model back in one line (:func:`load_adapted`).

A run that saved its weights (``train.save: true``) keeps them in ``<run folder>/weights`` in the formats people
load them with (:mod:`adaptbench.training.saving`): a PEFT adapter folder (LoRA, cartridge), BitFit's biases, a
whole model (full), a vanilla classification head.  Loading puts them back on the base model the record names
(the same source, dtype as the run resolved it), so what comes back is the model the run measured.
"""

from __future__ import annotations

import os
from typing import Any

from safetensors.torch import load_file

from ..errors import AdaptbenchError
from ..models.loading import load_model
from .finding import find_run
from .record import RunRecord
from .records import run_dir


def adapted_run(run: str, results_dir: str = "results") -> tuple[RunRecord, str]:
    """(record, run folder) of a finished run that saved adapted weights; a clear error otherwise."""
    found = find_run(run, results_dir)
    if isinstance(found, list):
        raise AdaptbenchError(f"{run} holds {len(found)} runs; name one by its run id: "
                              + ", ".join(r.run_id[:8] for r in found[:8]))
    record, sweep, _ = found
    if record.status != "ok":
        raise AdaptbenchError(f"run {record.run_id[:8]} did not finish ({record.status}): nothing to load")
    if not record.spec.get("trainable"):
        raise AdaptbenchError(f"run {record.run_id[:8]} ({record.spec.get('method')}) trained nothing: its context "
                              f"is in its prompt, there are no adapted weights to load or export")
    folder = run_dir(sweep, record.run_id)
    if not os.path.isdir(os.path.join(folder, "weights")):
        raise AdaptbenchError(f"run {record.run_id[:8]} did not save its weights ({folder}/weights is not there): "
                              f"rerun it with train.save=true (that run gets a run id of its own)")
    return record, folder


def _base(record: RunRecord, device: str):
    """The base model and tokenizer the run adapted, loaded as the run resolved them."""
    spec = record.spec["model"]
    dtype = (record.spec.get("resolved") or {}).get("dtype") or record.model.dtype or "float32"
    return load_model(spec["name"], gguf_file=spec.get("gguf_file"), tokenizer=spec.get("tokenizer"),
                      revision=spec.get("revision"), dtype=dtype, device=device,
                      trust_remote_code=bool(spec.get("trust_remote_code")))


def load_adapted(run: str, results_dir: str = "results", device: str = "cpu") -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a finished run's adapted model, ready to generate: the base model with the
    run's LoRA adapter or cartridge (a ``PeftModel``), its BitFit biases, or its fully trained weights; a vanilla
    run's model is the classification-head model (``model(ids, mask)`` -> label logits).  ``run``: a run id
    (prefix) under ``results_dir``, or a run folder."""
    record, folder = adapted_run(run, results_dir)
    weights, trainable = os.path.join(folder, "weights"), record.spec["trainable"]
    if trainable == "full":
        loaded = load_model(os.path.join(weights, "model"), device=device,
                            dtype=(record.spec.get("resolved") or {}).get("dtype") or "float32")
    else:
        loaded = _base(record, device)
    model = loaded.model
    if trainable in ("lora", "cartridge"):
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, os.path.join(weights, "adapter")).eval()
    elif trainable == "bitfit":
        if (record.spec.get("bitfit") or {}).get("add_biases"):
            from ..training.policies import add_zero_biases

            add_zero_biases(model)
        biases = load_file(os.path.join(weights, "bitfit_biases.safetensors"), device=str(loaded.device))
        missing = sorted(set(biases) - {n for n, _ in model.named_parameters()})
        if missing:
            raise AdaptbenchError(f"run {record.run_id[:8]}: its biases name parameters the base model lacks: "
                                  f"{missing[:3]} (another model at {record.spec['model']['name']}?)")
        model.load_state_dict(biases, strict=False)
    if record.spec.get("method") == "vanilla":
        model = _with_head(record, model, os.path.join(weights, "classifier_head.safetensors"))
    return model, loaded.tokenizer


def head_description(record: RunRecord) -> dict:
    """What a vanilla run's head needs besides its weights: its shape, what it reads, the labels in its order."""
    info = record.method_info
    return {"kind": getattr(info, "head", None) or "linear", "pooling": getattr(info, "pooling", None) or "last_token",
            "labels": list(record.task["labels"]), "prompt": record.prompt}


def _with_head(record: RunRecord, lm, path: str):
    from ..methods.vanilla import HeadModel

    about = head_description(record)
    head = HeadModel(lm, len(about["labels"]), kind=about["kind"], pooling=about["pooling"])
    head.head.load_state_dict(load_file(path, device=str(next(lm.parameters()).device)))
    return head.eval()
