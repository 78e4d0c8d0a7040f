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


class RunSkipped(AdaptbenchError):
    """The run cannot be done as specified (e.g. the context does not fit the model's window).

    Not a failure: the runner records the run as ``skipped`` with this message as the reason.
    """
