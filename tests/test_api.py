"""The public API is explicit: a sorted __all__ whose every name resolves, and py.typed."""

from pathlib import Path

import loglik


def test_all_is_sorted_and_resolves():
    assert loglik.__all__ == sorted(loglik.__all__)
    for name in loglik.__all__:
        assert getattr(loglik, name) is not None, name


def test_core_entry_points():
    for name in ("Scorer", "Score", "Example", "LoglikError", "InputError"):
        assert name in loglik.__all__
    assert callable(loglik.Scorer.from_pretrained) and callable(loglik.Scorer.from_hf)


def test_py_typed_shipped():
    assert (Path(loglik.__file__).parent / "py.typed").exists()


def test_error_tree():
    for cls in (loglik.InputError, loglik.ConfigError, loglik.ModelLoadError,
                loglik.TokenizationError, loglik.ContextLengthError, loglik.BackendError,
                loglik.MissingExtraError):
        assert issubclass(cls, loglik.LoglikError)
    assert issubclass(loglik.ContextLengthError, loglik.InputError)
