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


def test_function_entry_points_survive_submodule_imports():
    """Importing the implementing modules must not shadow loglik.compare/choose/train."""
    import importlib

    for module in ("loglik.comparison", "loglik.choices", "loglik.trainer", "loglik.cli.compare",
                   "loglik.cli.choose", "loglik.cli.train"):
        importlib.import_module(module)
    for name in ("compare", "choose", "train"):
        value = getattr(loglik, name)
        assert callable(value) and not isinstance(value, type(loglik)), name
