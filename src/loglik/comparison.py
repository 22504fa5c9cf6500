"""Which model makes the observed responses more probable, by how much, and is that real?

:func:`compare` scores every example under every model and returns a :class:`Comparison`:

* per model, the corpus totals and normalisations of :mod:`loglik.metrics`;
* per pair of models (a, b), the paired difference of totals ``Σ_i (logprob_a,i − logprob_b,i)``
  with a percentile-bootstrap confidence interval (examples resampled with replacement,
  seeded), the fraction of examples each model wins, and the examples that differ most;
* for pairs that share a tokenizer (or whose tokenizers give the same ids on the data: an HF
  folder and a GGUF file written from it), token-level statistics of the two next-token
  distributions in one pass (KL divergence, same top-1 rate, change of the true token's
  probability), in the manner of llama.cpp's ``--kl-divergence``, without files.

Models with different tokenizers score the same text, so totals (nats of the text) and
per-byte/per-character figures compare; per-token figures do not, and the pair says so
(``basis: "text"``). Models that share a tokenizer also share the tokenization work.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .data import Fields, to_examples
from .errors import ConfigError
from .metrics import CorpusStats, corpus_stats
from .types import Detail, Example, Request, Score

if TYPE_CHECKING:
    from .scorer import Scorer


KL_PERCENTILES = (50, 90, 99, 99.9)
#: examples scored per step: the unit of ``progress`` (each step is planned on its own)
STEP = 256


# -- the bootstrap -----------------------------------------------------------------------------
def bootstrap_sums(values: Sequence[float], *, num_samples: int = 10_000, seed: int = 0
                   ) -> np.ndarray:
    """Sums of ``num_samples`` resamples (with replacement, same size) of ``values``.

    Plain equivalent: ``[sum(random.choices(values, k=len(values))) for _ in range(B)]``
    with a seeded numpy generator, computed in blocks of at most ~4M indices.
    """
    d = np.asarray(values, dtype=np.float64)                         # (n,)
    n = len(d)
    if n == 0:
        return np.zeros(num_samples)
    rng = np.random.default_rng(seed)
    out = np.empty(num_samples)
    block = max(1, 4_000_000 // n)
    for s in range(0, num_samples, block):
        e = min(num_samples, s + block)
        idx = rng.integers(0, n, size=(e - s, n))                     # (b, n)
        out[s:e] = d[idx].sum(axis=1)
    return out


def percentile_interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The ``(1−c)/2`` and ``(1+c)/2`` quantiles of a bootstrap distribution.

    Uses the inverted empirical CDF (the smallest sample whose CDF reaches the level), so an
    enumerated distribution and a large sample of it give the same values.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1, got {confidence}")
    lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2],
                         method="inverted_cdf")
    return float(lo), float(hi)


# -- results -----------------------------------------------------------------------------------
@dataclass
class ModelSummary:
    """One model's totals over the data (``stats``) plus token-level rates."""

    name: str
    stats: CorpusStats
    tokenizer_group: int            # models with the same number share a tokenization
    top1_rate: float                # fraction of response tokens that are the argmax
    mean_entropy: float | None = None   # nats, with detail=True
    median_rank: float | None = None    # with detail=True

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, **self.stats.to_dict(), "tokenizer_group":
               self.tokenizer_group, "top1_rate": self.top1_rate}
        if self.mean_entropy is not None:
            out.update(mean_entropy=self.mean_entropy, median_rank=self.median_rank)
        return out


@dataclass
class PairStats:
    """Model ``a`` against model ``b``; every difference is a minus b (positive: a better)."""

    a: str
    b: str
    basis: str                  # "tokens" (same tokenizer) or "text" (different tokenizers)
    diff_total: float           # Σ logprob_a − Σ logprob_b (nats of the same text)
    ci_low: float
    ci_high: float
    confidence: float
    num_bootstrap: int
    diff_mean: float            # per example
    diff_per_byte: float
    diff_per_char: float
    win_rate_a: float           # fraction of examples with logprob_a > logprob_b
    win_rate_b: float
    tie_rate: float
    largest: list[dict[str, Any]] = field(default_factory=list)
    token_stats: dict[str, Any] | None = None
    diffs: np.ndarray | None = field(default=None, repr=False)        # per example
    bootstrap: np.ndarray | None = field(default=None, repr=False)    # resampled totals

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("diffs", "bootstrap")}
        if self.token_stats is None:
            out.pop("token_stats")
        return out


@dataclass
class Comparison:
    """The result of :func:`compare`; ``to_dict()`` is the ``loglik compare --json`` object."""

    models: list[ModelSummary]
    pairs: list[PairStats]
    examples: list[Example] = field(repr=False)
    scores: list[list[Score]] = field(repr=False)   # scores[model][example]
    tokenizers: list[Any] = field(default_factory=list, repr=False)   # per model, for plots

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    def pair(self, a: str, b: str) -> PairStats:
        for p in self.pairs:
            if (p.a, p.b) == (a, b):
                return p
        raise KeyError(f"no pair ({a!r}, {b!r}); pairs: {[(p.a, p.b) for p in self.pairs]}")

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models],
                "pairs": [p.to_dict() for p in self.pairs]}


# -- tokenizer identity ------------------------------------------------------------------------
def tokenizer_fingerprint(scorer: Scorer) -> str:
    """Equal for scorers that turn every example into the same token ids."""
    tok = scorer.tokenizer
    hf = getattr(tok, "hf", None)
    if callable(getattr(tok, "fingerprint", None)):   # adapters that know their vocabulary
        body = tok.fingerprint()
    elif hf is not None and hasattr(hf, "backend_tokenizer"):
        body = hf.backend_tokenizer.to_str()
    elif hf is not None:
        body = repr(sorted(hf.get_vocab().items()))
    else:
        body = f"object:{id(tok)}"
    extra = (tok.bos_token_id, tok.eos_token_id, tok.adds_bos, scorer.options,
             scorer.encoder.max_length)
    return hashlib.sha256((body + repr(extra)).encode()).hexdigest()


# -- token-level statistics of two distributions ---------------------------------------------
def _pair_reduction(pairs: Sequence[tuple[int, int]]):
    import torch

    def reduce(logps: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        cols = []
        t = targets.unsqueeze(-1)                                        # (C, 1)
        for i, j in pairs:
            la, lb = logps[i], logps[j]                                  # (C, V)
            pa = la.exp()
            # KL(a || b) = Σ_v p_a (log p_a − log p_b); 0·log 0 = 0
            kl = torch.where(pa > 0, pa * (la - lb), torch.zeros_like(la)).sum(-1)  # (C,)
            same = (la.argmax(-1) == lb.argmax(-1)).to(la.dtype)         # (C,)
            cols += [kl, same, la.gather(-1, t).squeeze(-1).exp(),
                     lb.gather(-1, t).squeeze(-1).exp()]
        return torch.stack(cols, dim=-1)                                 # (C, 4 * pairs)

    return reduce


def token_level_stats(scorers: Sequence[Any], encoded: Sequence[Any],
                      pairs: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """KL(a‖b), same-top-1 rate and true-token probability change at every response token.

    All ``scorers`` must share a tokenizer (``encoded`` is their common tokenization); each
    batch runs every model once and each pair's statistics come from the same chunk of
    logits. Returns one dict per pair.
    """
    from .distributions import position_stats

    requests = [Request(e.context_ids, e.response_ids) for e in encoded]
    per_request = position_stats([s.backend for s in scorers], requests, _pair_reduction(pairs),
                                 batch_tokens=min(s.batch_tokens for s in scorers))
    import torch

    rows = torch.cat(per_request) if per_request else torch.zeros(0, 4 * len(pairs))
    out = []
    for k in range(len(pairs)):
        kl, same, pa, pb = (rows[:, 4 * k + c].numpy() for c in range(4))
        n = len(kl)
        if n == 0:
            out.append({"num_tokens": 0})
            continue
        dp = pa - pb
        stats = {"num_tokens": n, "kl_mean": float(kl.mean()), "kl_max": float(kl.max())}
        for q in KL_PERCENTILES:
            stats[f"kl_p{q:g}"] = float(np.percentile(kl, q))
        stats.update(same_top1_rate=float(same.mean()), true_prob_diff_mean=float(dp.mean()),
                     true_prob_diff_rms=float(np.sqrt((dp ** 2).mean())),
                     true_prob_mean_a=float(pa.mean()), true_prob_mean_b=float(pb.mean()))
        out.append(stats)
    return out


# -- the comparison ----------------------------------------------------------------------------
def _largest(diffs: np.ndarray, examples: Sequence[Example], lp_a: np.ndarray,
             lp_b: np.ndarray, top: int) -> list[dict[str, Any]]:
    order = np.argsort(-np.abs(diffs), kind="stable")[:top]
    return [{"index": int(i), "id": examples[i].id, "prompt": examples[i].prompt[-80:],
             "response": examples[i].response[:80], "logprob_a": float(lp_a[i]),
             "logprob_b": float(lp_b[i]), "diff": float(diffs[i])} for i in order]


def compare(scorers: Sequence[Any] | Mapping[str, Any], examples: Iterable[Any], *,
            names: Sequence[str] | None = None, fields: Fields = Fields(),
            confidence: float = 0.95, num_bootstrap: int = 10_000, seed: int = 0,
            top: int = 5, token_stats: bool = True, detail: bool = False,
            progress: Callable[[int], None] | None = None) -> Comparison:
    """Score ``examples`` under every scorer and compare the models pairwise.

    Args:
        scorers: two or more :class:`loglik.Scorer` (a mapping gives their names).
        examples: pairs, dicts or Examples (as for ``Scorer.score_many``).
        names: display names (default: the mapping's keys, else ``model1``, ``model2``...).
        confidence: level of the bootstrap interval of each paired difference.
        num_bootstrap: resamples of the examples (seeded by ``seed``).
        top: how many examples with the largest differences each pair lists.
        token_stats: KL / top-1 statistics for pairs that share a tokenizer (needs backends
            that expose full distributions; others are skipped).
        detail: also score each token's rank and entropy (mean entropy, median rank).
        progress: called with the number of examples just scored, after every step of
            :data:`STEP` examples under each model (the CLI's progress bar).

    Returns:
        A :class:`Comparison`; ``comparison.to_dict()`` is JSON-able.

    Example:
        >>> c = compare({"small": s1, "large": s2}, [("2 + 2 =", " 4")])   # doctest: +SKIP
        >>> c.pair("small", "large").diff_total                             # doctest: +SKIP
    """
    if isinstance(scorers, Mapping):
        names = list(scorers) if names is None else list(names)
        scorers = list(scorers.values())
    scorers = list(scorers)
    names = list(names) if names is not None else [f"model{i + 1}" for i in range(len(scorers))]
    if not scorers:
        raise ConfigError("compare needs at least one model (two or more to compare them)")
    if len(names) != len(scorers) or len(set(names)) != len(names):
        raise ConfigError(f"need one distinct name per model; got names {names} for "
                          f"{len(scorers)} models")
    exs = list(to_examples(examples, fields))
    if not exs:
        raise ConfigError("compare needs at least one example; the input is empty")

    # Tokenize once per distinct tokenizer (and encoding options).
    groups: dict[str, list[int]] = {}
    for i, s in enumerate(scorers):
        groups.setdefault(tokenizer_fingerprint(s), []).append(i)
    encodings = [(members, scorers[members[0]].encoder.encode_many(exs))
                 for members in groups.values()]
    scores: list[list[Score]] = [[] for _ in scorers]
    det = Detail(rank=detail, entropy=detail)
    for members, encoded in encodings:
        for i in members:
            scores[i] = _score_in_steps(scorers[i], encoded, exs, det, progress)
    # Different tokenizer objects that give the same ids on this data (an HF folder and
    # the GGUF file written from it) share a group: their scores compare token by token.
    merged: list[tuple[list[int], list[Any]]] = []
    for members, encoded in encodings:
        same = next((m for m, e in merged if same_token_ids(e, encoded)), None)
        if same is None:
            merged.append((list(members), encoded))
        else:
            same.extend(members)
    group_of = {i: g for g, (members, _) in enumerate(merged) for i in members}
    encoded_of = {g: encoded for g, (_, encoded) in enumerate(merged)}

    models = [_summary(n, scores[i], group_of[i], detail) for i, n in enumerate(names)]
    lps = [np.array([s.logprob for s in sc]) for sc in scores]
    nbytes = models[0].stats.num_bytes
    nchars = models[0].stats.num_chars
    pairs: list[PairStats] = []
    index: list[tuple[int, int]] = []
    for a in range(len(scorers)):
        for b in range(a + 1, len(scorers)):
            d = lps[a] - lps[b]                                          # (n,)
            boot = bootstrap_sums(d, num_samples=num_bootstrap, seed=seed)
            lo, hi = percentile_interval(boot, confidence)
            total = math.fsum(d)
            n = len(d)
            pairs.append(PairStats(
                a=names[a], b=names[b],
                basis="tokens" if group_of[a] == group_of[b] else "text",
                diff_total=total, ci_low=lo, ci_high=hi, confidence=confidence,
                num_bootstrap=num_bootstrap, diff_mean=total / n,
                diff_per_byte=total / nbytes if nbytes else math.nan,
                diff_per_char=total / nchars if nchars else math.nan,
                win_rate_a=float((d > 0).mean()), win_rate_b=float((d < 0).mean()),
                tie_rate=float((d == 0).mean()), largest=_largest(d, exs, lps[a], lps[b], top),
                diffs=d, bootstrap=boot))
            index.append((a, b))
    if token_stats:
        _add_token_stats(scorers, encoded_of, group_of, pairs, index)
    return Comparison(models, pairs, exs, scores, [s.tokenizer for s in scorers])


def same_token_ids(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether two encodings of the same examples give every example the same context and
    response ids (``Encoded`` objects)."""
    return len(a) == len(b) and all(
        tuple(x.context_ids) == tuple(y.context_ids)
        and tuple(x.response_ids) == tuple(y.response_ids) for x, y in zip(a, b))


def _score_in_steps(scorer: Scorer, encoded: Sequence[Any], examples: Sequence[Example],
                    detail: Detail, progress: Callable[[int], None] | None) -> list[Score]:
    out: list[Score] = []
    for start in range(0, len(encoded), STEP):
        step = slice(start, start + STEP)
        out += scorer.score_encoded(encoded[step], examples[step], detail)
        if progress is not None:
            progress(len(encoded[step]))
    return out


def _summary(name: str, scores: list[Score], group: int, detail: bool) -> ModelSummary:
    greedy = [g for s in scores for g in s.token_greedy]
    summary = ModelSummary(name, corpus_stats(scores), group,
                           float(np.mean(greedy)) if greedy else math.nan)
    if detail:
        ent = [e for s in scores for e in (s.token_entropies or [])]
        rk = [r for s in scores for r in (s.token_ranks or [])]
        summary.mean_entropy = float(np.mean(ent)) if ent else math.nan
        summary.median_rank = float(np.median(rk)) if rk else math.nan
    return summary


def _add_token_stats(scorers, encoded_of, group_of, pairs, index) -> None:
    from .distributions import distribution_source

    for g, encoded in encoded_of.items():
        members = [i for i in range(len(scorers)) if group_of[i] == g]
        local = [(k, members.index(a), members.index(b)) for k, (a, b) in enumerate(index)
                 if group_of[a] == g and group_of[b] == g]
        if not local:
            continue
        try:
            for i in members:
                distribution_source(scorers[i].backend)
        except ConfigError:
            continue   # a backend without full distributions: totals only
        if len({int(scorers[i].backend.vocab_size) for i in members}) != 1:
            continue
        stats = token_level_stats([scorers[i] for i in members], encoded,
                                  [(a, b) for _, a, b in local])
        for (k, _, _), st in zip(local, stats):
            pairs[k].token_stats = st

