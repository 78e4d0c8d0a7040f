"""User-facing errors.

Anything the user can fix (a config field, a data file, a prompt, a model name) raises a subclass of
:class:`AdaptbenchError` whose message names the file, row, field or option at fault.  The CLI prints
the message and exits with status 2 instead of showing a traceback from deep inside a library.
"""


class AdaptbenchError(Exception):
    """Base class: bad input that the user can fix."""


class ConfigError(AdaptbenchError):
    """A config file or override is malformed or names an unknown field/value."""


class DataError(AdaptbenchError):
    """A dataset file, split, column or label is missing or invalid."""


class PromptError(AdaptbenchError):
    """A pattern or verbalizer does not work with the task or the tokenizer."""


class ModelError(AdaptbenchError):
    """A model cannot be found or loaded as specified."""


class ResultsWriteError(AdaptbenchError):
    """A result file could not be written (disk full, quota, permissions): the sweep stops, resumable."""


class Notice(UserWarning):
    """Something the user should know that is not an error (a model allowed to run its own code): the CLI
    prints it as ``warning: ...``; from Python it is a warning."""


class RunSkipped(AdaptbenchError):
    """The run cannot be done as specified (e.g. the context does not fit the model's window).

    Not a failure: the runner records the run as ``skipped`` with this message as the reason.
    """


def not_utf8(path: str) -> str:
    """'<path>: line N is not UTF-8 text (byte 0xe9 at column C); save the file as UTF-8' -- for a file whose
    text reading failed (the decoder's own offset is within a buffer, so the file is decoded again here)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        data.decode("utf-8")
    except OSError:
        return f"{path}: not UTF-8 text; save the file as UTF-8"
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        return (f"{path}: line {line} is not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
                f"save the file as UTF-8")
    return f"{path}: not UTF-8 text; save the file as UTF-8"
