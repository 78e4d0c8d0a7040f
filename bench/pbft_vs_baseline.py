"""PBFT training: adaptbench's verbalizer-only scoring with packed batches vs two baselines.

    python bench/pbft_vs_baseline.py                     # SmolLM2-135M, 16 RTE examples, full fine-tuning
    python bench/pbft_vs_baseline.py --trainable lora --epochs 4

* ``reference``: the reference study's way (uds-lsv/llmft): ``AutoModelForCausalLM`` computes
  full-vocabulary logits for every position of inputs padded to a fixed 256 tokens, and the loss then
  picks the verbalizer tokens at the answer position.
* ``careful``: what a careful transformers user writes: dynamic padding (each batch padded to its
  longest example, on the left) and logits at the answer position only (``logits_to_keep=1``), the
  verbalizer tokens picked from that one full-vocabulary row.
* ``adaptbench``: the answer position's hidden state times the verbalizer rows of the LM head only,
  the examples of a batch packed into rows without padding (block-diagonal attention).

All use the same model, sample, seed, optimizer, schedule, batch size and steps (the same training
loop: only the batching and the forward differ), one after the other in one process, each with its
own copy of the model.  Prints time per epoch, peak memory of the training phase (the process' peak
RSS, and its rise over the RSS at the start of training), the ratios against both baselines, and the
accuracy of each on the same evaluation examples.
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
import torch
from torch import nn

from adaptbench.config.schema import PromptSpec
from adaptbench.measure.costs import CostTracker, _rss_peak_bytes
from adaptbench.methods.pbft import VerbalizerModel
from adaptbench.models.loading import load_model
from adaptbench.training.packing import packing_works
from adaptbench._util.progress import make_progress
from adaptbench.prompts.prompt import PromptEncoder
from adaptbench.sweep.inputs import resolve_prompt
from adaptbench.data.sampling import few_shot_sample
from adaptbench.scoring.core import batched_logits
from adaptbench.training.policies import LoraSettings
from adaptbench.training.settings import TrainSettings
from adaptbench.data import eval_examples, get_task, resolve_data_dir, train_pool
from adaptbench.training.policies import apply_policy
from adaptbench.training.loop import TrainItem, train


class FullLogitsBaseline(nn.Module):
    """The usual PBFT forward: pad to a fixed length, full-vocabulary logits at every position."""

    def __init__(self, lm: nn.Module, token_ids: list[int], pad_id: int, max_length: int = 256):
        super().__init__()
        self.lm, self.head, self.pad_id, self.max_length = lm, None, pad_id, max_length
        self.register_buffer("token_ids", torch.tensor(token_ids), persistent=False)

    def forward(self, input_ids, attention_mask):
        extra = self.max_length - input_ids.shape[1]
        if extra > 0:
            input_ids = nn.functional.pad(input_ids, (0, extra), value=self.pad_id)
            attention_mask = nn.functional.pad(attention_mask, (0, extra), value=0)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (batch, 256, vocab)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        return logits[rows, attention_mask.sum(1) - 1][:, self.token_ids]


class AnswerLogitsBaseline(nn.Module):
    """The careful transformers user's PBFT forward: batches padded to their longest example on the left
    (so every answer is the last position), position ids from the mask, and the LM head applied at the
    last position only (``logits_to_keep=1``)."""

    max_length = None

    def __init__(self, lm: nn.Module, token_ids: list[int], pad_id: int):
        super().__init__()
        self.lm, self.head, self.pad_id = lm, None, pad_id
        self.register_buffer("token_ids", torch.tensor(token_ids), persistent=False)

    def forward(self, input_ids, attention_mask):
        shift = (attention_mask.shape[1] - attention_mask.sum(1)).tolist()  # the collate pads on the right
        input_ids = torch.stack([row.roll(k) for row, k in zip(input_ids, shift)])
        attention_mask = torch.stack([row.roll(k) for row, k in zip(attention_mask, shift)])
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         logits_to_keep=1).logits  # (batch, 1, vocab)
        return logits[:, -1, self.token_ids]


VARIANTS = ("adaptbench", "careful", "reference")


def run(name, model, items, evals, settings, loaded, seed, costs):
    packed = name == "adaptbench" and packing_works(model.lm)
    with costs.phase(f"train:{name}") as phase:
        start_rss = _rss_peak_bytes()  # the phase just reset the high-water mark: this is the current RSS
        log = train(model, items, settings, loss_fn=nn.functional.cross_entropy, pad_id=loaded.tokenizer.pad_token_id,
                    seed=seed, device=loaded.device, progress=make_progress(True), packed=packed)
    # positions the model computed (the baseline pads every example to 256 inside its forward)
    positions = log.padded_tokens if name != "reference" else len(items) * settings.epochs * model.max_length
    logits, _, _ = batched_logits(model, [q for q, _ in evals], loaded.tokenizer.pad_token_id, loaded.device, 16)
    acc = float((logits.argmax(1) == np.array([y for _, y in evals])).mean())
    return {"seconds_per_epoch": phase.seconds / log.epochs, "peak_rss": phase.peak_rss_bytes,
            "rise": phase.peak_rss_bytes - start_rss, "accuracy": acc, "final_loss": log.losses[-1],
            "positions": positions, "packed": packed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--trainable", default="full", choices=["full", "lora", "bitfit"])
    ap.add_argument("--eval-examples", type=int, default=100)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()

    task = get_task("rte")
    data_dir = resolve_data_dir(args.data_dir)
    sample = few_shot_sample(train_pool(task, data_dir), args.shots, 0, 2)
    evals_ex, _ = eval_examples(task.validation, data_dir, max_examples=args.eval_examples, seed=0)
    loaded = load_model(args.model)
    pad_id = loaded.tokenizer.pad_token_id
    enc = PromptEncoder(loaded.tokenizer, resolve_prompt(PromptSpec(), task), task.labels.names)
    items = [TrainItem(enc.query_ids(ex), torch.tensor(ex.label)) for ex in sample]
    evals = [(enc.query_ids(ex), ex.label) for ex in evals_ex]
    longest = max(len(it.input_ids) for it in items)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_ratio=0.1,
                             schedule="constant")
    print(f"{args.model}, PBFT {args.trainable}, {len(items)} RTE examples (longest {longest} tokens, mean "
          f"{np.mean([len(it.input_ids) for it in items]):.0f}), batch {args.batch_size}, {args.epochs} epochs, "
          f"{len(evals)} eval examples, torch threads {torch.get_num_threads()}")
    costs = CostTracker(loaded.device)
    results = {}
    for name in VARIANTS:
        if loaded is None:  # each variant trains a model of its own; never two in memory at once
            loaded = load_model(args.model)
        model = {"adaptbench": lambda: VerbalizerModel(loaded.model, enc.label_token_ids),
                 "careful": lambda: AnswerLogitsBaseline(loaded.model, enc.label_token_ids, pad_id),
                 "reference": lambda: FullLogitsBaseline(loaded.model, enc.label_token_ids, pad_id)}[name]()
        apply_policy(model, args.trainable, lora=LoraSettings())
        torch.manual_seed(0)
        results[name] = run(name, model, items, evals, settings, loaded, 0, costs)
        del model
        loaded = None
        gc.collect()
    ours = results["adaptbench"]
    print(f"\n{'':12s} {'s/epoch':>9s} {'peak RSS GiB':>13s} {'RSS rise GiB':>13s} {'positions':>10s} "
          f"{'accuracy':>9s} {'final loss':>10s}")
    for name, r in results.items():
        print(f"{name:12s} {r['seconds_per_epoch']:9.1f} {r['peak_rss'] / 2**30:13.2f} {r['rise'] / 2**30:13.2f} "
              f"{r['positions']:10d} {r['accuracy']:9.3f} {r['final_loss']:10.4f}")
    print(f"(adaptbench batches packed: {ours['packed']}; positions = token positions the model computed, "
          f"padding included)")
    for name in VARIANTS[1:]:
        base = results[name]
        print(f"\nvs {name:9s}: speed-up {base['seconds_per_epoch'] / ours['seconds_per_epoch']:.2f}x   "
              f"peak memory {ours['peak_rss'] / base['peak_rss']:.2f}x   "
              f"training memory (rise) {ours['rise'] / max(base['rise'], 1):.2f}x   "
              f"accuracy {ours['accuracy']:.3f} vs {base['accuracy']:.3f}   "
              f"final loss {ours['final_loss']:.4f} vs {base['final_loss']:.4f}")


if __name__ == "__main__":
    main()
