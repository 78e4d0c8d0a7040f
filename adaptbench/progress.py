"""Progress bars for long loops (scoring, later training), drawn with rich on a terminal."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)


def make_progress(enabled: bool = True):
    """A ``progress(description, total)`` context-manager factory yielding ``advance(n)``."""

    @contextmanager
    def progress(description: str, total: int):
        if not enabled or not console.is_terminal:
            yield lambda n=1: None
            return
        bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                       TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                       console=console, transient=True)
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n=1: bar.advance(task, n)

    return progress
