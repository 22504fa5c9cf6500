"""Check 5 of the audit: recompute another tool's log-probs and name its likely flaw.

A ``--check`` file has one JSON object per line with ``prompt``, ``response`` and
``token_logprobs`` (per response token, natural log) and/or ``logprob`` (their sum). Each
record is recomputed with the scorer; a record that disagrees is matched against the values
that each known flaw would have produced, computed with the same model:

==================== =========================================================================
diagnosis            what the other tool did
==================== =========================================================================
shifted              off by one position: the window of scored positions slid by one (the last
                     prompt token in, the last response token out, or the reverse), or each
                     token was read from its own position's distribution (no shift at all)
prompt_included      prompt tokens were scored too (the values are a longer tail of the sequence)
bos_scored           a BOS token was scored as the first response token
bos_missing          the context lacked the BOS token the model expects
mean_not_sum         ``logprob`` is the mean per token, not the sum
log_base_2 / _10     log-probs in bits / base 10 instead of nats
probabilities_added  probabilities were added (``logprob`` = sum p_i or log sum p_i), or
                     ``token_logprobs`` are probabilities
unknown              none of these reproduces the numbers
==================== =========================================================================

Candidates are computed lazily, in the order above (after ``ok``), through the backend, so
any backend can be audited.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..data import read_records, record_to_example
from ..errors import InputError, LoglikError
from ..types import Encoded, Request
from .result import CheckResult, RecordResult

if TYPE_CHECKING:
    from ..scorer import Scorer


LN2, LN10 = math.log(2), math.log(10)


def read_check_file(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(0-based line, record) for each record; validates the fields a record must have."""
    for source, line, record in read_records(path, "jsonl"):
        record_to_example(record, source=source, line=line)   # prompt/response present
        tl, lp = record.get("token_logprobs"), record.get("logprob")
        if tl is None and lp is None:
            raise InputError('needs "token_logprobs" (per response token) and/or "logprob" '
                             f"(their sum); fields present: {', '.join(record)}",
                             source=source, line=line)
        if tl is not None and not (isinstance(tl, list) and all(
                isinstance(v, (int, float)) for v in tl)):
            raise InputError('"token_logprobs" must be a list of numbers', source=source,
                             line=line, field="token_logprobs")
        if lp is not None and not isinstance(lp, (int, float)):
            raise InputError('"logprob" must be a number', source=source, line=line,
                             field="logprob")
        yield line - 1, record


class _Candidates:
    """The values each flaw would produce for one example, computed on first use."""

    def __init__(self, scorer: Scorer, enc: Encoded) -> None:
        self.scorer, self.enc, self._memo = scorer, enc, {}
        self.bos = scorer.tokenizer.bos_token_id

    def _run(self, context: Sequence[int], targets: Sequence[int]) -> list[float]:
        if not targets:
            return []
        return list(self.scorer.backend.score([Request(tuple(context), tuple(targets))])[0]
                    .logprobs)

    def get(self, name: str) -> list[float] | None:
        if name not in self._memo:
            self._memo[name] = getattr(self, "_" + name)()
        return self._memo[name]

    def _ours(self) -> list[float]:
        return self._run(self.enc.context_ids, self.enc.response_ids)

    def _full(self) -> list[float] | None:
        """Log-probs of every token after the first: the prompt's, then the response's."""
        ctx = self.enc.context_ids
        return self._run(ctx[:1], ctx[1:] + self.enc.response_ids)

    def _bos_missing(self) -> list[float] | None:
        ctx = self.enc.context_ids
        if self.bos is None or len(ctx) < 2 or ctx[0] != self.bos:
            return None
        return self._run(ctx[1:], self.enc.response_ids)

    def _bos_scored(self) -> list[float] | None:
        if self.bos is None:
            return None
        return self._run(self.enc.context_ids, (self.bos, *self.enc.response_ids))

    def _unshifted(self) -> list[float]:
        """log softmax(logits at y_i's own position)[y_i]: the shift forgotten."""
        seq = list(self.enc.context_ids) + list(self.enc.response_ids)
        start = len(self.enc.context_ids)
        requests = [Request(tuple(seq[:start + i + 1]), (t,))
                    for i, t in enumerate(self.enc.response_ids)]
        return [r.logprobs[0] for r in self.scorer.backend.score(requests)] if requests else []


def _close(a: Sequence[float], b: Sequence[float] | None, atol: float) -> bool:
    return b is not None and len(a) == len(b) and all(
        abs(x - y) <= atol + 1e-6 * abs(y) for x, y in zip(a, b))


def _close_sum(x: float, y: float | None, atol: float, n: int) -> bool:
    return y is not None and math.isfinite(y) and abs(x - y) <= atol * max(1, n) + 1e-6 * abs(y)


def diagnose_tokens(values: Sequence[float], c: _Candidates, atol: float) -> str:
    """The diagnosis of a reported per-token list."""
    ours = c.get("ours")
    n, m = len(ours), len(values)
    if _close(values, ours, atol):
        return "ok"
    full = c.get("full")
    if m > n and full is not None and m <= len(full) and _close(values, full[-m:], atol):
        return "prompt_included"
    if _close(values, c.get("bos_missing"), atol):
        return "bos_missing"
    if m == n + 1 and (_close(values, c.get("bos_scored"), atol)
                       or _close(values[1:], ours, atol)):
        return "bos_scored"
    if m == n and n >= 2 and full is not None and len(full) > n:
        earlier = full[-n - 1:-1]           # last prompt token in, last response token out
        if _close(values, earlier, atol) or _close(values[:-1], ours[1:], atol):
            return "shifted"
    if m == n and _close(values, c.get("unshifted"), atol):
        return "shifted"
    if _close(values, [v / LN2 for v in ours], atol):
        return "log_base_2"
    if _close(values, [v / LN10 for v in ours], atol):
        return "log_base_10"
    if _close(values, [math.exp(v) for v in ours], atol):
        return "probabilities_added"
    return "unknown"


def diagnose_sum(total: float, c: _Candidates, atol: float) -> str:
    """The diagnosis of a reported ``logprob`` (the sum), when no token list settles it."""
    ours = c.get("ours")
    n = len(ours)
    s = math.fsum(ours)
    if _close_sum(total, s, atol, n):
        return "ok"
    full = c.get("full")
    if full is not None and _close_sum(total, math.fsum(full), atol, len(full)):
        return "prompt_included"
    for name in ("bos_missing", "bos_scored"):
        vals = c.get(name)
        if vals is not None and _close_sum(total, math.fsum(vals), atol, n):
            return name
    if full is not None and len(full) > n >= 1 and _close_sum(
            total, math.fsum(full[-n - 1:-1]), atol, n):
        return "shifted"
    if n >= 2 and _close_sum(total, s / n, atol, 1):
        return "mean_not_sum"
    if _close_sum(total, s / LN2, atol, n):
        return "log_base_2"
    if _close_sum(total, s / LN10, atol, n):
        return "log_base_10"
    probs = math.fsum(math.exp(v) for v in ours)
    if _close_sum(total, probs, atol, n) or (probs > 0 and _close_sum(total, math.log(probs),
                                                                       atol, n)):
        return "probabilities_added"
    if _close_sum(total, math.fsum(c.get("unshifted")), atol, n):
        return "shifted"
    return "unknown"


_REASONS = {
    "ok": "agrees",
    "shifted": "the values are off by one position (or not shifted at all)",
    "prompt_included": "prompt tokens are scored too",
    "bos_scored": "a BOS token is scored as the first response token",
    "bos_missing": "the context lacks the BOS token the model expects",
    "mean_not_sum": "logprob is the mean per token, not the sum",
    "log_base_2": "log-probs are in bits (log base 2), not nats",
    "log_base_10": "log-probs are in log base 10, not nats",
    "probabilities_added": "probabilities were added instead of log-probabilities",
    "unknown": "disagrees, and matches none of the known flaws",
}


def diagnose_record(scorer: Scorer, index: int, record: dict[str, Any], enc: Encoded, *,
                    atol: float = 1e-3, candidates: _Candidates | None = None
                    ) -> RecordResult:
    """Recompute one record and name what went wrong, if anything."""
    c = candidates or _Candidates(scorer, enc)
    ours = c.get("ours")
    expected = math.fsum(ours)
    tl, lp = record.get("token_logprobs"), record.get("logprob")
    max_diff = None
    if tl is not None:
        values = [float(v) for v in tl]
        if len(values) == len(ours):
            max_diff = max((abs(a - b) for a, b in zip(values, ours)), default=0.0)
        diagnosis = diagnose_tokens(values, c, atol)
        if diagnosis == "ok" and lp is not None:
            diagnosis = diagnose_sum(float(lp), c, atol)
    else:
        diagnosis = diagnose_sum(float(lp), c, atol)
    reported = float(lp) if lp is not None else math.fsum(tl)
    reason = _REASONS[diagnosis]
    if diagnosis == "unknown":
        reason += (f" (reported {reported:.4f}, expected {expected:.4f}; "
                   f"{len(tl) if tl is not None else '?'} values for {len(ours)} tokens)")
    return RecordResult(index, diagnosis == "ok", diagnosis, reason, expected, reported,
                        max_diff)


def check_file(scorer: Scorer, path: str, *, atol: float = 1e-3,
               progress: Callable[[], None] | None = None) -> tuple[CheckResult,
                                                                    list[RecordResult]]:
    """Check 5: every record of ``path`` recomputed and diagnosed."""
    results: list[RecordResult] = []
    seen: dict[tuple[tuple[int, ...], tuple[int, ...]], _Candidates] = {}
    for index, record in read_check_file(path):
        ex = record_to_example(record, source=path, line=index + 1)
        try:
            enc = scorer.encoder.encode_many([ex])[0]
        except LoglikError as exc:
            results.append(RecordResult(index, False, "unknown", f"cannot encode: {exc}"))
            continue
        key = (enc.context_ids, enc.response_ids)   # records of the same pair share the work
        if key not in seen:
            if len(seen) >= 64:                     # bounded: forget the oldest pair
                seen.pop(next(iter(seen)))
            seen[key] = _Candidates(scorer, enc)
        results.append(diagnose_record(scorer, index, record, enc, atol=atol,
                                       candidates=seen[key]))
        if progress:
            progress()
    counts: dict[str, int] = {}
    for r in results:
        counts[r.diagnosis] = counts.get(r.diagnosis, 0) + 1
    bad = [r for r in results if not r.ok]
    if bad:
        top = max((d for d in counts if d != "ok"), key=counts.get)
        summary = (f"{len(bad)} of {len(results)} record(s) of {path} disagree; most likely "
                   f"flaw: {top} ({_REASONS[top]}, {counts[top]} record(s))")
    else:
        summary = f"all {len(results)} record(s) of {path} agree within {atol:g} nats per token"
    details = {"file": path, "records": len(results), "disagree": len(bad),
               "diagnoses": counts, "atol": atol,
               "first_disagreeing": [r.index for r in bad[:10]]}
    return CheckResult("check_file", "fail" if bad else "pass", summary, details), results


def dumps_record(prompt: str, response: str, token_logprobs: Sequence[float] | None = None,
                 logprob: float | None = None) -> str:
    """One line of a ``--check`` file (used by tests and docs)."""
    rec: dict[str, Any] = {"prompt": prompt, "response": response}
    if token_logprobs is not None:
        rec["token_logprobs"] = list(token_logprobs)
    if logprob is not None:
        rec["logprob"] = logprob
    return json.dumps(rec, ensure_ascii=False)
