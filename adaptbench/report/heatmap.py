"""Needle-in-a-haystack heat maps: the share of needle questions answered (gold answer contained in the reply)
per context length x needle depth, for the base model, the teacher (the context in its prompt) and each
distilled student -- pooled over the runs at each length, every cell annotated with k/n."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .plots import _save, _slug  # noqa: E402

METRIC = "contains"


def _cells(records) -> dict[str, dict[str, dict[tuple[int, float], list[int]]]]:
    """model name -> panel (base, teacher, student (trainable), each arm of cd.arms) -> (L, depth) -> [k, n],
    pooled over runs.  The students of one context (``trainable: [lora, cartridge]``) each measure the base
    model, the teacher and the arms on the same questions: a model's replies to the same questions count once."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: [0, 0])))
    seen: set = set()
    for rec in records:
        info = rec.method_info
        judged = getattr(info, "judged", None)
        if rec.status != "ok" or judged is None or not judged.groups or "depth" not in judged.groups:
            continue
        model = rec.spec["model"]["name"]
        panels = {"base": "base", "teacher": "teacher", "student": f"student ({rec.spec.get('trainable') or '-'})"}
        for depth, metrics in judged.groups["depth"].items():
            for role, est in metrics[METRIC].items():
                if role != "student":
                    asked = (model, role, info.context_tokens, depth, tuple(
                        (row.get("input"), row.get(role)) for row in judged.replies if str(row.get("depth")) == depth))
                    if asked in seen:
                        continue
                    seen.add(asked)
                cell = out[model][panels.get(role, role)][(info.context_tokens, float(depth))]
                cell[0] += est.k or 0
                cell[1] += est.n
    return out


def niah_heatmaps(records, out_dir: str) -> list[tuple[str, list[str]]]:
    figures = []
    for model, panels in _cells(records).items():
        lengths = sorted({L for cells in panels.values() for L, _ in cells})
        depths = sorted({d for cells in panels.values() for _, d in cells})
        names = sorted(panels, key=lambda p: (p != "base", p != "teacher", p))
        fig, axes = plt.subplots(1, len(names), figsize=(2.2 + 1.1 * len(depths) * len(names), 0.6 + 0.5 * len(lengths)),
                                 squeeze=False)
        for ax, name in zip(axes[0], names):
            grid = np.full((len(lengths), len(depths)), np.nan)
            for (L, d), (k, n) in panels[name].items():
                i, j = lengths.index(L), depths.index(d)
                grid[i, j] = k / n if n else np.nan
                ax.text(j, i, f"{k}/{n}", ha="center", va="center", fontsize=7)
            image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
            ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
            ax.set_yticks(range(len(lengths)), [f"{L:,}" for L in lengths], fontsize=7)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("needle depth", fontsize=8)
        axes[0][0].set_ylabel("context tokens", fontsize=8)
        fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="answered")
        fig.suptitle(f"{model}: needle in a haystack", y=1.0 + 0.25 / (0.6 + 0.5 * len(lengths)))  # above the titles
        caption = (f"{model}: share of held-out needle questions whose reply contains the gold answer, per context "
                   f"length and needle depth (k/n pooled over runs; replies to the same questions counted once), for "
                   f"the base model without the context, the teacher with it in the prompt, each distilled student and "
                   f"each other option of cd.arms.")
        figures.append((caption, _save(fig, out_dir, _slug("niah", model))))
    return figures
