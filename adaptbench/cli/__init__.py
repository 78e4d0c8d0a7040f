"""The command line: the typer app (``adaptbench run|report|show|tasks|methods|models``), its console lines
and tables, and ``show``."""

from .app import main

__all__ = ["main"]
