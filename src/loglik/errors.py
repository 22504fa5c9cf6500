"""Exceptions a user can act on.

Every error loglik raises on purpose is a :class:`LoglikError`; its message says what was
expected, what was received and what to do. The tree::

    LoglikError
    ├── InputError              a record or file the user gave is malformed (file, line, field)
    ├── ConfigError             an option or combination of options is invalid
    ├── ModelLoadError          a model or tokenizer could not be loaded
    ├── TokenizationError       the prompt/response boundary could not be made exact
    ├── ContextLengthError      an example does not fit the model's context
    ├── BackendError            a backend failed or returned something inconsistent
    ├── TrainingError           training diverged (a NaN/inf loss) or cannot resume
    └── MissingExtraError       an optional dependency is not installed (names the pip extra)
"""

from __future__ import annotations


class LoglikError(Exception):
    """Base class of every error loglik raises on purpose."""


class InputError(LoglikError, ValueError):
    """A record or input file is malformed.

    Args:
        message: What is wrong and how to fix it.
        source: File name (or ``"<stdin>"``, ``"<python>"``).
        line: 1-based line (or row) number, when known.
        field: Name of the offending field, when known.
    """

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.source, self.line, self.field, self.reason = source, line, field, message
        where = ""
        if source is not None:
            where = source + (f" line {line}" if line is not None else "") + ": "
        elif line is not None:
            where = f"record {line}: "
        super().__init__(where + message)


class ConfigError(LoglikError, ValueError):
    """An option, or a combination of options, is invalid."""


class ModelLoadError(LoglikError, OSError):
    """A model or tokenizer could not be loaded."""


class TokenizationError(LoglikError, ValueError):
    """The response tokens could not be made to decode exactly to the response text.

    ``source``/``line`` name the record when known (the message starts with them).
    """

    def __init__(self, message: str, *, source: str | None = None,
                 line: int | None = None) -> None:
        self.source, self.line, self.reason = source, line, message
        where = ""
        if source is not None:
            where = source + (f" line {line}" if line is not None else "") + ": "
        super().__init__(where + message)


class ContextLengthError(InputError):
    """An example is longer than the model's context window."""


class BackendError(LoglikError, RuntimeError):
    """A backend failed or returned results inconsistent with the request."""


class TrainingError(LoglikError, RuntimeError):
    """Training cannot go on: a non-finite loss, or a checkpoint that does not fit the run."""


class MissingExtraError(LoglikError, ImportError):
    """An optional dependency is missing; the message names the exact pip command."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed; "
            f"run: pip install 'loglik[{extra}]'"
        )


def require(module: str, *, extra: str, feature: str):
    """Import an optional dependency or raise :class:`MissingExtraError` naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(module.split(".")[0], extra, feature) from exc
