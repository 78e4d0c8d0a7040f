"""Progress bars for long loops (scoring, teacher passes, training), drawn with rich on a terminal; the
libraries' own bars kept quiet while adaptbench loads models."""

from __future__ import annotations

import functools
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)
from rich.text import Text

console = Console(stderr=True)


class RateColumn(ProgressColumn):
    """Items per second (examples, batches or steps, as the bar counts), once there is a rate to show."""

    def render(self, task) -> Text:
        return Text(f"{task.speed:,.1f}/s" if task.speed else "", style="progress.data.speed")


def make_progress(enabled: bool = True):
    """A ``progress(description, total)`` context-manager factory yielding ``advance(n)``."""

    @contextmanager
    def progress(description: str, total: int):
        if not enabled or not console.is_terminal:
            yield lambda n=1: None
            return
        bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=console, transient=True)
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    return progress


@contextmanager
def library_bars_off(datasets_only: bool = False):
    """No "Loading weights", GGUF "de-quantizing" or "Generating train split" bar for every model and data
    file a sweep loads: transformers' and datasets' bars are switched off through their own switches,
    the GGUF reader's plain tqdm by giving it ``disable=True``.  ``datasets_only``: reading data, before
    transformers is needed."""
    from datasets.utils import logging as ds_logging

    restore = []
    if ds_logging.is_progress_bar_enabled():
        ds_logging.disable_progress_bar()
        restore.append(ds_logging.enable_progress_bar)
    if not datasets_only:
        from transformers import modeling_gguf_pytorch_utils as gguf_utils
        from transformers.utils import logging as hf_logging

        if hf_logging.is_progress_bar_enabled():
            hf_logging.disable_progress_bar()
            restore.append(hf_logging.enable_progress_bar)
        gguf_tqdm = gguf_utils.tqdm
        gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)
        restore.append(lambda: setattr(gguf_utils, "tqdm", gguf_tqdm))
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()
