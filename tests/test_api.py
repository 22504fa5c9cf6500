"""The public API is explicit: a sorted __all__ whose every name resolves, and py.typed."""

import importlib
import inspect
import types
from pathlib import Path

import pytest

import loglik


# The public surface, spelled out: adding or removing a name is a deliberate change here.
EXPORTED = [
    "AuditReport", "BackendError", "Comparison", "ConfigError", "ContextLengthError", "Detail",
    "Encoded", "Example", "Explanation", "FailedRecord", "Fields", "InputError", "LoglikError",
    "MissingExtraError", "ModelLoadError", "Request", "Score", "Scorer", "TokenResult",
    "TokenizationError", "TrainingError", "choose", "compare", "conditional_nll",
    "corpus_perplexity", "corpus_stats", "iter_scores_with_words", "read_examples",
    "score_on_ray", "train", "word_logprobs",
]


def test_exported_members():
    """As httpx's test_exported_members: a sorted __all__ that is exactly the public names."""
    assert loglik.__all__ == sorted(loglik.__all__) == EXPORTED
    eager = {name for name, value in vars(loglik).items()
             if not name.startswith("_") and not isinstance(value, types.ModuleType)
             and getattr(value, "__module__", "").startswith("loglik")}
    assert eager <= set(loglik.__all__), sorted(eager - set(loglik.__all__))


@pytest.mark.parametrize("name", EXPORTED)
def test_each_exported_name_imports(name):
    namespace: dict = {}
    exec(f"from loglik import {name}", namespace)           # noqa: S102 - the user's spelling
    value = namespace[name]
    assert value is getattr(loglik, name)
    assert getattr(value, "__module__", "").startswith("loglik."), (name, value)
    assert getattr(value, "__name__", name) == name


def test_lazy_names_resolve_to_their_module():
    """The lazily imported entry points are the objects their declared module defines."""
    lazy = loglik._LAZY
    assert set(lazy) <= set(loglik.__all__)
    for name, target in lazy.items():
        module, attr = target.split(":")
        assert getattr(loglik, name) is getattr(importlib.import_module(module), attr), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        loglik.nope  # noqa: B018


def test_core_entry_points():
    """Data first, options keyword-only (STYLE.md 9)."""
    for method, data in ((loglik.Scorer.from_pretrained, ["model"]),
                         (loglik.Scorer.from_hf, ["model", "tokenizer"])):
        params = list(inspect.signature(method).parameters.values())
        assert [p.name for p in params[:len(data)]] == data
        assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params[len(data):])
    for method in (loglik.Scorer.score, loglik.Scorer.score_many):
        params = list(inspect.signature(method).parameters.values())[1:]
        assert all(p.kind is p.KEYWORD_ONLY for p in params if p.name in ("rank", "top_k"))


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
