"""Can this engine's log-probs be trusted? Checks that print PASS / FAIL with their numbers.

A KV-cache bug, wrong position ids under left padding, a tokenizer that does not match the
model's vocabulary, a doubled BOS or an off-by-one shift each silently changes every number
downstream. :func:`audit` runs:

1. ``kv_cache`` — full forward vs incremental decoding with the KV cache
   (:mod:`loglik.audit.model_checks`);
2. ``invariance`` — alone vs batched, right/left padded, packed, shared context;
3. ``normalisation`` — every next-token distribution sums to 1;
4. ``tokenizer`` — tokenizer vs model vocabulary and special ids, BOS, boundary report
   (:mod:`loglik.audit.tokenizer_check`);
5. ``check_file`` — with ``check_file=PATH``, another tool's log-probs recomputed and each
   disagreeing record diagnosed (:mod:`loglik.audit.diagnose`).

:func:`audit_engine` audits a serving engine (any OpenAI-compatible server) against the
reference weights instead (:mod:`loglik.audit.engine`).

Example:
    >>> report = loglik.audit(scorer, [("The capital of France is", " Paris")])  # doctest: +SKIP
    >>> report.passed, [c.name for c in report.checks]                           # doctest: +SKIP
    (True, ['kv_cache', 'invariance', 'normalisation', 'tokenizer'])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..data import Fields, to_examples
from ..types import Example
from .engine import ENGINE_CHECKS, audit_engine
from .result import DIAGNOSES, AuditReport, CheckResult, RecordResult

if TYPE_CHECKING:
    from ..scorer import Scorer


CHECKS = ("kv_cache", "invariance", "normalisation", "tokenizer")

# Used when no data is given: short and long, shared prompts (multiple choice), whitespace at
# the boundary, an empty prompt, digits, non-ASCII text and bytes.
DEFAULT_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("The capital of France is", " Paris."),
    ("The capital of France is", " Rome."),
    ("The capital of France is ", "Berlin, and the capital of Italy is Rome."),
    ("Question: what is the answer?\nAnswer:", " the answer is forty-two."),
    ("", "The quick brown fox jumps over the lazy dog."),
    ("def add(a, b):\n", "    return a + b\n"),
    ("In 1998,", " 12,345 people visited the museum; in 1999, 23,456 did."),
    ("东京是", "日本的首都。"),
    ("Pizza", " 🍕 and coffee ☕ are great."),
)


def audit(scorer: Scorer, examples: Iterable[Any] | None = None, *,
          check_file: str | None = None, checks: Sequence[str] = CHECKS,
          max_examples: int = 16, atol: float = 1e-3, fields: Fields = Fields(),
          progress: Callable[[int], None] | None = None) -> AuditReport:
    """Run the audit's checks on a scorer (and, optionally, another tool's output).

    Args:
        scorer: a :class:`loglik.Scorer` (checks 1 and parts of 2 need a Hugging Face model).
        examples: pairs, dicts or Examples to run the checks on (default: a built-in set);
            checks 1-3 use the first ``max_examples``, check 4 all of them.
        check_file: a JSONL of another tool's ``token_logprobs``/``logprob`` to diagnose.
        checks: which of :data:`CHECKS` to run.
        atol: tolerance per token (nats) when comparing a ``check_file``.
        progress: called with 1 after each check and after each ``check_file`` record.
    """
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(f"unknown check(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(CHECKS)}")
    from .model_checks import check_invariance, check_kv_cache, check_normalisation
    from .tokenizer_check import check_tokenizer, encode_each

    items = list(to_examples(examples if examples is not None else DEFAULT_EXAMPLES, fields))
    encoded, errors = encode_each(scorer, items)
    good = [e for e in encoded if e is not None][:max_examples]
    done = progress or (lambda n: None)
    results: list[CheckResult] = []
    if "kv_cache" in checks:
        results.append(check_kv_cache(scorer, good))
        done(1)
    if "invariance" in checks:
        results.append(check_invariance(scorer, good))
        done(1)
    if "normalisation" in checks:
        results.append(check_normalisation(scorer, good))
        done(1)
    if "tokenizer" in checks:
        results.append(check_tokenizer(scorer, items, encoded, errors))
        done(1)
    records: list[RecordResult] | None = None
    if check_file is not None:
        from .diagnose import check_file as run_check_file

        result, records = run_check_file(scorer, check_file, atol=atol,
                                         progress=lambda: done(1))
        results.append(result)
    return AuditReport(results, records)


__all__ = ["CHECKS", "DEFAULT_EXAMPLES", "DIAGNOSES", "ENGINE_CHECKS", "AuditReport",
           "CheckResult", "Example", "RecordResult", "audit", "audit_engine"]
