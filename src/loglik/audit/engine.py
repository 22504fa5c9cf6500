"""``loglik audit --engine URL``: are the log-probs a serving engine returns the model's own?

The engine (vLLM, SGLang, llama-cpp-python, TGI, ``loglik serve``: any OpenAI-compatible
completions server) gets each example's tokens (context + response, as token ids) with
``echo`` and ``logprobs``; loglik computes the same tokens' log-probs with the reference
weights. An engine that refuses token ids (llama-cpp-python) gets the decoded text instead,
its tokens matched to ours by ``text_offset``
(:func:`loglik.backends.openai.align_by_offsets`), one prompt per request when it refuses
lists. Checks, each PASS / FAIL with its numbers:

1. ``alignment`` — the echo has the tokens sent, and each value sits on its own token:
   diagnoses ``shifted`` (the value at a token's own position, the shift forgotten),
   ``first_token_dropped``, ``bos_doubled`` (a BOS added in front of the one sent),
   ``count_mismatch``, ``ids_mismatch``, ``tokenization_differs`` (text sent: the engine's
   tokens do not start where ours do), ``first_token_unscored`` (the engine conditions on a
   BOS it does not echo and returns null for the first token's log-prob; the other values
   are still checked);
2. ``agreement`` — max and mean |engine - loglik| per token, against ``atol`` (the engine's
   dtype: 1e-4 in fp32, 5e-2 in 16-bit, :func:`loglik.logprobs.tolerance`);
3. ``normalisation`` — the returned top-k probabilities sum to at most 1, and to the same mass
   as the reference's top-k (``top_k_renormalised`` when the engine normalised over the top-k
   only);
4. ``sampling`` — the returned log-probs are the model's, not the sampling distribution's:
   the temperature they imply (``temperature_applied``), and no change when the request
   asks for temperature / top_p / penalties;
5. ``batch_invariance`` — each example alone vs in one request with longer neighbours;
6. ``determinism`` — the same request repeated gives the same numbers.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..data import Fields, to_examples
from ..errors import ConfigError
from ..types import Detail, Request
from .result import AuditReport, CheckResult

ENGINE_CHECKS = ("alignment", "agreement", "normalisation", "sampling", "batch_invariance",
                 "determinism")
SAMPLING_PARAMS = {"temperature": 1.7, "top_p": 0.8, "presence_penalty": 1.5,
                   "frequency_penalty": 1.5}


@dataclass
class Echo:
    """One engine answer, reduced to the sent tokens: values[i] for sent[i] (None for 0)."""

    ids: list[int | None]          # echoed ids (None where the engine sends text tokens)
    values: list[float | None]
    tops: list[dict[str, float] | None]
    why: str | None = None         # text sent: why the engine's tokens could not be matched


def _echo(choice: dict) -> Echo:
    from ..backends.openai import parse_token_id

    lp = choice.get("logprobs") or {}
    tokens = lp.get("tokens") or []
    values = [None if v is None else float(v) for v in lp.get("token_logprobs") or []]
    tops = list(lp.get("top_logprobs") or [None] * len(tokens))
    return Echo([parse_token_id(t) for t in tokens], values, tops)


def _echo_text(tokenizer: Any, choice: dict, seq: list[int], skip: int) -> Echo:
    """The answer to the text of ``seq[skip:]``, put on ``seq``'s positions by text offset."""
    from ..backends.openai import align_by_offsets
    from ..errors import BackendError

    if tokenizer.encode_batch([tokenizer.decode(seq[skip:])])[0] != seq[skip:]:
        # A split boundary: the text's own tokens are not these; as text they cannot be sent.
        return Echo([], [], [], why="not_canonical")
    try:
        picks = align_by_offsets(tokenizer, choice, seq, skip, skip)
    except BackendError:
        return Echo([], [], [], why="tokenization_differs")
    lp = choice.get("logprobs") or {}
    values = [None if v is None else float(v) for v in lp.get("token_logprobs") or []]
    tops = list(lp.get("top_logprobs") or [None] * len(values))
    tail = range(picks[-1] + 1, len(values)) if picks else range(0)   # generated tokens
    vals = [None] * skip + [values[j] for j in picks] + [values[j] for j in tail]
    alts = [None] * skip + [tops[j] for j in picks] + [tops[j] for j in tail]
    return Echo([None] * len(vals), vals, alts)


def _max_diff(a: Sequence[float | None], b: Sequence[float | None]) -> float:
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if not pairs:
        return 0.0
    return max(abs(x - y) for x, y in pairs)


class EngineAudit:
    """The state of one audit: the engine's backend, the reference scorer, the sequences."""

    def __init__(self, backend: Any, scorer: Any, sequences: list[list[int]], *,
                 atol: float, top_k: int, repeats: int) -> None:
        self.backend, self.scorer, self.seqs = backend, scorer, sequences
        self.atol, self.k, self.repeats = atol, top_k, repeats
        detail = Detail(top_k=top_k)
        results = scorer.run_requests([Request(tuple(s[:1]), tuple(s[1:])) for s in sequences],
                                      detail)
        self.ref = [r.logprobs for r in results]            # values of seq[1:]
        self.ref_top = [r.top for r in results]
        self.sent_as = "ids"                                # "text" once the engine refuses ids
        self.main = self.ask(sequences)
        self.aligned: list[int] = []

    def ask(self, seqs: list[list[int]], **params: Any) -> list[Echo]:
        """The engine's answers for ``seqs``; several at once arrive together (one request,
        or concurrent requests to an engine that takes one prompt per request)."""
        from ..backends.openai import ServerError, refuses_ids

        if self.sent_as == "ids":
            try:
                out = self._ask(seqs, params)
                self.backend.mode = "ids"        # known now: errors are retried from here on
                return out
            except ServerError as exc:
                if not refuses_ids(exc):
                    raise
                self.sent_as = self.backend.mode = "text"
        return self._ask(seqs, params)

    def _ask(self, seqs: list[list[int]], params: dict[str, Any]) -> list[Echo]:
        from ..backends.openai import text_of

        tok = self.backend.tokenizer
        texts = [text_of(tok, s) for s in seqs]
        prompts = seqs if self.sent_as == "ids" else [t for t, _ in texts]

        def one_call(part: list[Any]) -> list[dict]:
            return self.backend.completion(part, logprobs=self.k, **params)

        n = self.backend.prompts_per_call
        parts = [prompts[i:i + n] for i in range(0, len(prompts), n)]
        if n == 1 and len(parts) > 1:
            with ThreadPoolExecutor(len(parts)) as pool:
                choices = [c for out in pool.map(one_call, parts) for c in out]
        else:
            choices = [c for part in parts for c in one_call(part)]
        if self.sent_as == "ids":
            return [_echo(c) for c in choices]
        return [_echo_text(tok, c, s, skip) for c, s, (_, skip) in zip(choices, seqs, texts)]

    # -- 1. alignment ---------------------------------------------------------------------
    def alignment(self) -> CheckResult:
        found: dict[str, int] = {}
        worst: dict[str, Any] = {}
        for i, (seq, echo) in enumerate(zip(self.seqs, self.main)):
            why = self._diagnose(seq, echo, i)
            found[why] = found.get(why, 0) + 1
            if why in ("ok", "first_token_unscored"):
                self.aligned.append(i)
            if why != "ok" and why not in worst:
                worst[why] = {"example": i, "sent": len(seq), "echoed": len(echo.values)}
        unsent = found.pop("not_canonical", 0)
        worst.pop("not_canonical", None)
        bad = {k: v for k, v in found.items() if k != "ok"}
        how = {"sent_as": self.sent_as, "prompts_per_request": self.backend.prompts_per_call,
               "not_checked_split_boundary": unsent}
        sent = (f" (sent as text: the engine refuses token ids; {unsent} example(s) with a "
                "split boundary cannot be sent as text and are left out)"
                if self.sent_as == "text" else "")
        if bad:
            names = ", ".join(f"{k} ({v})" for k, v in sorted(bad.items()))
            return CheckResult("alignment", "fail", f"{sum(bad.values())} of "
                               f"{len(self.seqs) - unsent} "
                               f"echoes wrong: {names}{sent}",
                               {"diagnoses": bad, "examples": worst, **how})
        return CheckResult("alignment", "pass", f"all {len(self.seqs) - unsent} echoes carry "
                           f"the sent tokens, each value on its own token{sent}",
                           {"diagnoses": {}, **how})

    def _diagnose(self, seq: list[int], echo: Echo, i: int) -> str:
        if echo.why is not None:
            return echo.why
        n, m, gen = len(seq), len(echo.values), self.backend.max_tokens
        if all(t is not None for t in echo.ids):      # the engine says which ids it echoed
            if echo.ids[:n] != seq:
                if echo.ids[:n + 1] == [seq[0], *seq]:
                    return "bos_doubled"
                if echo.ids[:n - 1] == seq[1:]:
                    return "first_token_dropped"
                return "ids_mismatch" if m >= n else "count_mismatch"
        elif not n <= m <= n + gen:
            return {n - 1: "first_token_dropped", n + 1 + gen: "bos_doubled"}.get(
                m, "count_mismatch")
        values, ref, cut = echo.values[1:n], self.ref[i], 0
        if len(values) > 1 and values[0] is None and None not in values[1:]:
            values, ref, cut = values[1:], ref[1:], 1   # first token unscored after a BOS
        if None in values:
            return "count_mismatch"                   # fewer values than tokens
        ok = "first_token_unscored" if cut else "ok"
        if _max_diff(values, ref) <= self.atol:
            return ok
        if _max_diff(values, self._unshifted(seq)[cut:]) <= self.atol:
            return "shifted"
        return ok   # aligned; the values themselves are judged by `agreement`

    def _unshifted(self, seq: list[int]) -> list[float]:
        """log softmax(logits at token t's own position)[token t]: the shift forgotten."""
        reqs = [Request(tuple(seq[:t + 1]), (seq[t],)) for t in range(1, len(seq))]
        return [r.logprobs[0] for r in self.scorer.run_requests(reqs)]

    # -- 2. agreement ---------------------------------------------------------------------
    def agreement(self) -> CheckResult:
        diffs = [abs(a - b) for i in self.aligned
                 for a, b in zip(self.main[i].values[1:len(self.seqs[i])], self.ref[i])
                 if a is not None]
        if not diffs:
            return CheckResult("agreement", "skip", "no aligned echo to compare")
        worst = max(diffs)
        mean = statistics.fmean(diffs)
        details = {"max_abs_diff": worst, "mean_abs_diff": mean, "tokens": len(diffs),
                   "atol": self.atol}
        if worst > self.atol:
            return CheckResult("agreement", "fail", f"max |Δ| {worst:.3g} nats > {self.atol:g} "
                               f"(mean {mean:.3g}) over {len(diffs)} tokens", details)
        return CheckResult("agreement", "pass", f"max |Δ| {worst:.3g} nats <= {self.atol:g} "
                           f"over {len(diffs)} tokens", details)

    # -- 3. normalisation -----------------------------------------------------------------
    def normalisation(self) -> CheckResult:
        from ..backends.openai import parse_token_id

        over, mass_diff, n, raised, collided = -1.0, 0.0, 0, 0, 0
        for i in self.aligned:
            for j, top in enumerate(self.main[i].tops[1:len(self.seqs[i])]):
                ref = self.ref_top[i][j] if self.ref_top[i] else None
                if not top or not ref:
                    continue
                if any(parse_token_id(t) is None for t in top) and self._collide(ref):
                    # Keyed by text, two top-k tokens of the same text (byte-fallback pieces
                    # all read "") are one key: the engine cannot return both.
                    collided += 1
                    continue
                values = sorted(top.values(), reverse=True)[:self.k]
                mass = sum(math.exp(v) for v in values)
                ref_mass = sum(math.exp(lp) for _, lp in ref[:len(values)])
                over = max(over, mass - 1)
                mass_diff = max(mass_diff, abs(mass - ref_mass))
                # Renormalised over a subset: every alternative raised by the same log(1/Z).
                shifts = [v - lp for v, (_, lp) in zip(values, ref)]
                raised += max(shifts) - min(shifts) <= self.atol and min(shifts) > self.atol
                n += 1
        if not n and not collided:
            return CheckResult("normalisation", "skip", "the engine returned no top-k "
                               "alternatives (top_logprobs)")
        tol = max(10 * self.atol, 1e-4)
        details = {"positions": n, "top_k": self.k, "max_excess_mass": max(over, 0.0),
                   "max_top_k_mass_diff": mass_diff, "positions_renormalised": raised,
                   "positions_keys_collide": collided}
        if over > tol:
            return CheckResult("normalisation", "fail", f"the returned top-{self.k} sums to "
                               f"{1 + over:.4f} > 1: not log-probabilities", details)
        if mass_diff > tol and raised > n // 2:
            details["diagnosis"] = "top_k_renormalised"
            return CheckResult("normalisation", "fail", f"top_k_renormalised: at {raised} of {n} "
                               "positions every alternative is raised by the same amount (the "
                               "engine normalised over a top-k, not the vocabulary); top-k mass "
                               f"off by up to {mass_diff:.3g}", details)
        if mass_diff > tol:
            details["diagnosis"] = "top_k_mass_differs"
            return CheckResult("normalisation", "fail", f"top_k_mass_differs: the top-{self.k} "
                               f"mass differs from the model's by up to {mass_diff:.3g}",
                               details)
        if collided:
            details["diagnosis"] = "top_k_keys_collide"
            return CheckResult("normalisation", "fail", f"top_k_keys_collide: at {collided} of "
                               f"{n + collided} positions two of the model's top-{self.k} tokens "
                               "have the same text and the engine, keying alternatives by text, "
                               "returns one of them; elsewhere the top-k mass is <= 1 and within "
                               f"{mass_diff:.2g} of the model's", details)
        return CheckResult("normalisation", "pass", f"top-{self.k} mass <= 1 and within "
                           f"{mass_diff:.2g} of the model's at {n} positions", details)

    def _collide(self, ref: Sequence[tuple[int, float]]) -> bool:
        texts = [self.backend.tokenizer.decode([t]) for t, _ in ref]
        return len(set(texts)) < len(texts)

    # -- 4. sampling ----------------------------------------------------------------------
    def sampling(self) -> CheckResult:
        ratios = []
        for i in self.aligned:
            for j, top in enumerate(self.main[i].tops[1:len(self.seqs[i])]):
                ref_top = self.ref_top[i][j] if self.ref_top[i] else None
                value = self.main[i].values[j + 1]
                if not top or not ref_top or value is None:
                    continue
                d_ref = self.ref[i][j] - ref_top[0][1]       # <= 0: gap to the argmax
                d_eng = value - max(top.values())
                if d_ref < -0.5:
                    ratios.append(d_eng / d_ref)
        if not self.aligned:
            return CheckResult("sampling", "skip", "no aligned echo to compare")
        asked = self.ask([self.seqs[i] for i in self.aligned], **SAMPLING_PARAMS)
        changed = max(self._diff(a, self.main[i], i) for a, i in zip(asked, self.aligned))
        details: dict[str, Any] = {"params_sent": SAMPLING_PARAMS,
                                   "max_change_with_params": changed}
        problems = []
        if ratios:
            implied = 1 / statistics.median(ratios) if statistics.median(ratios) else math.inf
            details["implied_temperature"] = implied
            if abs(implied - 1) > 0.02:
                details["diagnosis"] = "temperature_applied"
                problems.append(f"temperature_applied: the returned log-probs imply "
                                f"temperature {implied:.3g}, not 1")
        if changed > self.atol:
            problems.append(f"asking for {', '.join(SAMPLING_PARAMS)} changes the returned "
                            f"log-probs by up to {changed:.3g} nats")
            details.setdefault("diagnosis", "sampling_params_applied")
        if problems:
            return CheckResult("sampling", "fail", "; ".join(problems), details)
        return CheckResult("sampling", "pass", "returned log-probs are the model's (implied "
                           f"temperature {details.get('implied_temperature', 1.0):.3g}; "
                           f"sampling parameters change them by {changed:.2g})", details)

    # -- 5. batch invariance, 6. determinism ----------------------------------------------
    def batch_invariance(self) -> CheckResult:
        long = max(self.seqs, key=len)
        worst = 0.0
        for i in self.aligned:
            alone = self.ask([self.seqs[i]])[0]
            crowd = self.ask([long, self.seqs[i], long[::-1]])[1]
            worst = max(worst, self._diff(alone, self.main[i], i), self._diff(crowd, alone, i))
        return self._verdict("batch_invariance", worst, "alone vs among longer neighbours")

    def determinism(self) -> CheckResult:
        seqs = [self.seqs[i] for i in self.aligned]
        worst = 0.0
        for _ in range(self.repeats):
            again = self.ask(seqs)
            worst = max([worst] + [self._diff(a, self.main[i], i)
                                   for a, i in zip(again, self.aligned)])
        return self._verdict("determinism", worst, f"{self.repeats} repeats")

    def _diff(self, a: Echo, b: Echo, i: int) -> float:
        """Max |Δ| over the sent tokens' values (a generated token may differ by design)."""
        n = len(self.seqs[i])
        return _max_diff(a.values[:n], b.values[:n])

    def _verdict(self, name: str, worst: float, what: str) -> CheckResult:
        if not self.aligned:
            return CheckResult(name, "skip", "no aligned echo to compare")
        details = {"max_abs_diff": worst, "atol": self.atol}
        status = "fail" if worst > self.atol else "pass"
        sign = ">" if status == "fail" else "<="
        return CheckResult(name, status, f"{what}: max |Δ| {worst:.3g} nats {sign} "
                           f"{self.atol:g}", details)


def audit_engine(url: str, scorer: Any, examples: Iterable[Any] | None = None, *,
                 model: str | None = None, api_key: str | None = None,
                 checks: Sequence[str] = ENGINE_CHECKS, max_examples: int = 16,
                 atol: float | None = None, engine_dtype: str = "float32", top_k: int = 5,
                 repeats: int = 3, timeout: float = 60.0, fields: Fields = Fields()
                 ) -> AuditReport:
    """Compare an engine's returned log-probs with ``scorer`` (the reference weights).

    Args:
        url: the engine's base URL, e.g. ``http://127.0.0.1:8000/v1``.
        scorer: a :class:`loglik.Scorer` over the same weights (and tokenizer).
        examples: pairs to send (default: :data:`loglik.audit.DEFAULT_EXAMPLES`).
        atol: per-token tolerance in nats (default: 1e-4 for ``engine_dtype`` float32 or
            float64, 5e-2 for 16-bit types).

    Example:
        >>> audit_engine("http://127.0.0.1:8000/v1", Scorer.from_pretrained("gpt2")).passed
        True                                                     # doctest: +SKIP
    """
    from ..backends.openai import OpenAIBackend
    from . import DEFAULT_EXAMPLES

    unknown = [c for c in checks if c not in ENGINE_CHECKS]
    if unknown:
        raise ConfigError(f"unknown engine check(s) {', '.join(unknown)}; choose from "
                          f"{', '.join(ENGINE_CHECKS)}")
    if atol is None:
        atol = 1e-4 if engine_dtype in ("float32", "float64") else 5e-2
    items = list(to_examples(examples if examples is not None else DEFAULT_EXAMPLES, fields))
    encoded = scorer.encoder.encode_many(items[:max_examples])
    seqs = [list(e.context_ids) + list(e.response_ids) for e in encoded if e.response_ids]
    backend = OpenAIBackend(url, scorer.tokenizer, model=model, api_key=api_key, mode="auto",
                            timeout=timeout, max_tokens=1)
    try:
        run = EngineAudit(backend, scorer, seqs, atol=atol, top_k=top_k, repeats=repeats)
        results = [run.alignment()]   # the others read only the aligned echoes
        results += [getattr(run, name)() for name in ENGINE_CHECKS[1:] if name in checks]
    finally:
        backend.close()
    if "alignment" not in checks:
        results = results[1:]
    return AuditReport(results)
