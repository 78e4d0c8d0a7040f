"""``adaptbench export RUN --to DIR``: a run's adapted model where people load models from, with a model card.

- ``peft`` (LoRA, cartridge): the PEFT adapter folder, ``PeftModel.from_pretrained(base, DIR)`` (a vanilla run's
  head beside it, as below);
- ``merged``: a whole transformers model folder with its tokenizer (``AutoModelForCausalLM.from_pretrained(DIR)``,
  and so the serving engines that read such folders): a LoRA adapter merged into the base weights, BitFit's
  biases in place, a fully trained model as it is; a vanilla run's classification head beside it
  (``classifier_head.safetensors``, and ``classifier_head.json``: its kind, pooling, labels and prompt).  A
  cartridge is a KV prefix, not weights: it cannot be merged.
- ``gguf``: the merged model as one float32 GGUF file (``model.gguf``) for llama.cpp, through llama.cpp's own
  converter (:mod:`.gguf`; ``make setup-gguf``); an architecture the converter lacks is named in the error.

Every export has a ``README.md`` naming the base model and its hash, the method, the distilled context, the run's
measured numbers (with n and an interval) and its run id.
"""

from __future__ import annotations

import json
import os
import shutil

from ..errors import AdaptbenchError
from ..measure.shares import wilson_interval
from . import gguf
from .adapted import adapted_run, head_description, load_adapted
from .record import RunRecord

FORMATS = ("peft", "merged", "gguf")
HEAD_FILE = "classifier_head.safetensors"
GGUF_FILE = "model.gguf"


def _target(to: str, force: bool, run_folder: str) -> None:
    here, there = os.path.realpath(to), os.path.realpath(run_folder)
    if os.path.commonpath([here, there]) == here:
        raise AdaptbenchError(f"--to {to}: it holds the run's own folder ({run_folder}); give a folder outside it")
    if os.path.exists(to) and not os.path.isdir(to):
        raise AdaptbenchError(f"--to {to}: a file is there; give a folder")
    if os.path.isdir(to) and os.listdir(to):
        if not force:
            raise AdaptbenchError(f"--to {to}: the folder is not empty; give an empty or new folder, or --force to "
                                  f"replace what is there")
        shutil.rmtree(to)
    os.makedirs(to, exist_ok=True)


def export(run: str, to: str, fmt: str | None = None, results_dir: str = "results", force: bool = False,
           llama_cpp: str | None = None) -> str:
    """Write the run's adapted model to ``to`` in ``fmt`` (default: peft for LoRA and cartridge runs, else
    merged); returns the format written."""
    record, folder = adapted_run(run, results_dir)
    trainable = record.spec["trainable"]
    fmt = fmt or ("peft" if trainable in ("lora", "cartridge") else "merged")
    if fmt not in FORMATS:
        raise AdaptbenchError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    if fmt == "peft" and trainable not in ("lora", "cartridge"):
        raise AdaptbenchError(f"--format peft: run {record.run_id[:8]} trained {trainable}, not a PEFT adapter; "
                              f"use --format merged")
    if fmt in ("merged", "gguf") and trainable == "cartridge":
        raise AdaptbenchError(f"--format {fmt}: run {record.run_id[:8]}'s cartridge is a trained KV prefix, not "
                              f"weights: it cannot be merged into the model; use --format peft")
    if fmt == "gguf":
        gguf.find_converter(llama_cpp)  # before any work: is there a converter?
        if record.spec.get("method") == "vanilla":
            raise AdaptbenchError(f"--format gguf: run {record.run_id[:8]} is a vanilla classification head, which "
                                  f"llama.cpp cannot run; use --format merged")
    _target(to, force, folder)
    if fmt == "peft":
        shutil.copytree(os.path.join(folder, "weights", "adapter"), to, dirs_exist_ok=True)
        _head_beside(record, folder, to)
    elif fmt == "merged":
        _merged(record, folder, to, results_dir)
    else:
        merged = os.path.join(to, ".merged")
        try:
            _merged(record, folder, merged, results_dir)
            gguf.convert(merged, os.path.join(to, GGUF_FILE), llama_cpp,
                         (record.model.architecture if record.model else None) or "model")
        finally:
            shutil.rmtree(merged, ignore_errors=True)
    with open(os.path.join(to, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(record, fmt))
    return fmt


def _merged(record: RunRecord, folder: str, to: str, results_dir: str) -> None:
    from ..models.loading import save_plain

    model, tokenizer = load_adapted(os.path.join(folder), results_dir)
    lm = getattr(model, "lm", model)  # a vanilla run: the head model's language model
    if record.spec["trainable"] == "lora":
        lm = lm.merge_and_unload()
    if (record.spec.get("bitfit") or {}).get("add_biases"):
        _config_with_biases(lm, record)
    save_plain(lm, tokenizer, to)
    _head_beside(record, folder, to)


def _head_beside(record: RunRecord, folder: str, to: str) -> None:
    """A vanilla run's classification head next to its model or adapter, with what it needs to be used."""
    head = os.path.join(folder, "weights", HEAD_FILE)
    if os.path.isfile(head):
        shutil.copy(head, os.path.join(to, HEAD_FILE))
        with open(os.path.join(to, "classifier_head.json"), "w", encoding="utf-8") as f:
            json.dump(head_description(record), f, indent=1)


def _config_with_biases(lm, record: RunRecord) -> None:
    """BitFit's added biases (``bitfit.add_biases``) written into the model's config, so the folder loads them."""
    flags = [f for f in ("attention_bias", "mlp_bias") if hasattr(lm.config, f)]
    if not flags:
        raise AdaptbenchError(f"--format merged: run {record.run_id[:8]} added biases to a {type(lm).__name__}, "
                              f"whose config has no attention_bias/mlp_bias to say so: a merged folder would load "
                              f"without them")
    for flag in flags:
        setattr(lm.config, flag, True)


def _share(value: float | None, n: int) -> str:
    if value is None:
        return "-"
    interval = wilson_interval(round(value * n), n) if n else None
    return f"{value:.3f} (n {n}" + (f", 95 % CI [{interval[0]:.3f}, {interval[1]:.3f}])" if interval else ")")


def model_card(record: RunRecord, fmt: str) -> str:
    """The export's README.md: what the weights are, where they came from, and what they were measured to do."""
    spec, info = record.spec, record.method_info
    model = spec["model"]["name"]
    files = (spec.get("resolved") or {}).get("files") or {}
    lines = [f"# {spec.get('method')} ({spec['trainable']}) on {model}", "",
             f"Exported by adaptbench from run `{record.run_id}` (sweep `{record.sweep}`) as `{fmt}`.", "",
             "## What it is", "",
             f"- base model: `{model}`" + (f" from `{record.model.source}`" if record.model else "")
             + (f", SHA-256 `{files['model']}`" if files.get("model") else ""),
             f"- method: {spec.get('method')}, trained: {spec['trainable']}, task: {record.task_name or '-'}, "
             f"shots: {spec.get('shots')}, data seed: {spec.get('data_seed')}",
             f"- dtype: {(spec.get('resolved') or {}).get('dtype') or (record.model.dtype if record.model else '-')}"]
    if getattr(info, "context", None):
        lines.append(f"- distilled context: {info.context}" + (f" `{info.context_file}`" if info.context_file else "")
                     + (f", {info.context_tokens:,} tokens" if info.context_tokens else "")
                     + "".join(f", {k} SHA-256 `{v}`" for k, v in files.items() if k != "model"))
    lines += ["", "## Measured", ""]
    for name, slices in record.metrics.items():
        overall = slices.get("all")
        if overall is not None:
            lines.append(f"- {name}: accuracy {_share(overall.accuracy, overall.n)}")
    heldout = getattr(info, "heldout", None)
    if heldout is not None and heldout.recovered is not None:
        lines.append(f"- the context's effect recovered on held-out inputs: {heldout.recovered:.0%} "
                     f"({heldout.positions} positions)")
    judged = getattr(info, "judged", None)
    if judged is not None:
        found = [(f"check {label}", per_model.get("student")) for label, per_model in (judged.checks or {}).items()]
        found += [(metric, per_model.get("student")) for metric, per_model in (judged.answers or {}).items()]
        for label, est in found:
            if est is not None and est.value is not None:
                ci = f", 95 % CI [{est.ci95[0]:.3f}, {est.ci95[1]:.3f}]" if est.ci95 else ""
                lines.append(f"- {label}: student {est.value:.3f} (n {est.n}{ci})")
    lines += [f"- costs: {record.total_seconds:,.0f} s in all, peak memory {record.peak_memory_bytes / 2**30:.2f} GiB",
              "", "## Load it", "", "```python", *_how_to_load(record, fmt, model), "```", ""]
    return "\n".join(lines)


def _how_to_load(record: RunRecord, fmt: str, model: str) -> list[str]:
    if fmt == "gguf":
        return ["# llama.cpp: llama-server -m THIS_FOLDER/model.gguf  (or llama-cpp-python's llama_cpp.server)",
                "from transformers import AutoModelForCausalLM",
                "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER', gguf_file='model.gguf')"]
    if fmt == "peft":
        lines = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM",
                 f"base = AutoModelForCausalLM.from_pretrained({model!r})  # the base model above",
                 "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')"]
    else:
        lines = ["from transformers import AutoModelForCausalLM, AutoTokenizer",
                 "model = AutoModelForCausalLM.from_pretrained('THIS_FOLDER')",
                 "tokenizer = AutoTokenizer.from_pretrained('THIS_FOLDER')"]
    if record.spec.get("method") == "vanilla":  # the head beside it: classifier_head.json says how it was used
        lines += ["# the classification head (labels, pooling and the prompt it read: classifier_head.json)",
                  "import json, safetensors.torch", "from adaptbench.methods.vanilla import HeadModel",
                  "about = json.load(open('THIS_FOLDER/classifier_head.json'))",
                  "classifier = HeadModel(model, len(about['labels']), kind=about['kind'], pooling=about['pooling'])",
                  "classifier.head.load_state_dict(safetensors.torch.load_file('THIS_FOLDER/" + HEAD_FILE + "'))",
                  "# classifier(ids, mask) -> one logit per label, from the hidden state of each row's last token"]
    return lines
