"""loglik: exact conditional log-likelihood log Pr(y | x) under causal language models.

>>> import loglik
>>> scorer = loglik.Scorer.from_pretrained()                    # doctest: +SKIP
>>> scorer.score("The capital of France is", " Paris").logprob  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

from .data import Fields, read_examples
from .errors import (BackendError, ConfigError, ContextLengthError, InputError, LoglikError,
                     MissingExtraError, ModelLoadError, TokenizationError, TrainingError)
from .scorer import Scorer
from .types import Detail, Encoded, Example, FailedRecord, Request, Score, TokenResult

from .version import __version__

# Entry points that live in heavier modules, imported on first use: name -> "module:attr".
_LAZY: dict[str, str] = {
    "compare": "loglik.comparison:compare",
    "conditional_nll": "loglik.objective:conditional_nll",
    "train": "loglik.trainer:train",
    "Comparison": "loglik.comparison:Comparison",
    "choose": "loglik.choices:choose",
    "corpus_stats": "loglik.metrics:corpus_stats",
    "iter_scores_with_words": "loglik.metrics:iter_scores_with_words",
    "word_logprobs": "loglik.metrics:word_logprobs",
    "AuditReport": "loglik.audit:AuditReport",
    "Explanation": "loglik.explain:Explanation",
    "corpus_perplexity": "loglik.longtext:corpus_perplexity",
    "score_on_ray": "loglik.distributed:score_on_ray",
}

__all__ = sorted([
    "BackendError", "ConfigError", "ContextLengthError", "Detail", "Encoded", "Example",
    "FailedRecord", "Fields", "InputError", "LoglikError", "MissingExtraError", "ModelLoadError", "Request",
    "Score", "Scorer", "TokenResult", "TokenizationError", "TrainingError", "read_examples", *_LAZY,
])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name].split(":")
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'loglik' has no attribute {name!r}")
