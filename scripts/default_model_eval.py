"""Held-out figures of the default model: NLL and bits-per-byte, conditional matching.

* **Held-out source**: the held-out modules' source, cut into documents of at most
  ``max_tokens`` tokens at line boundaries, each scored from BOS (prompt ``""``). Per-token
  NLL = -sum logprob / tokens (nats); bits-per-byte = -sum logprob / (ln 2 x UTF-8 bytes).
* **Baselines that need no training**: the unigram distribution of the train split's tokens
  (add-one smoothed, scored on the very same token ids), and the same architecture at its
  initialisation (the seed ``loglik train`` starts from).
* **Conditional matching**: for each held-out pair i, log Pr(docstring_i | signature_i) >
  log Pr(docstring_i | signature_j), where j is another pair whose docstring has the same
  indentation (so the layout alone cannot tell them apart), chosen by a seeded derangement.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any


def mismatched_partners(pairs: Sequence[dict[str, Any]], *, seed: int = 0) -> list[int]:
    """For each pair, the index of another pair with the same docstring indentation.

    Within each indentation group the pairs are shuffled with ``seed`` and each is matched
    with the next one in that cyclic order (a derangement: never itself). A group of one
    is matched with a pair of the nearest other indentation.
    """
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(int(p["indent"]), []).append(i)
    rng = random.Random(seed)
    partner = [-1] * len(pairs)
    singles = []
    for indent in sorted(groups):
        members = groups[indent]
        rng.shuffle(members)
        if len(members) == 1:
            singles.append(members[0])
            continue
        for k, i in enumerate(members):
            partner[i] = members[(k + 1) % len(members)]
    for i in singles:
        partner[i] = (i + 1) % len(pairs)
    return partner


def matching(scorer: Any, pairs: Sequence[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Share of pairs whose docstring is more probable after its own signature."""
    partner = mismatched_partners(pairs, seed=seed)
    own = scorer.score_many([(p["prompt"], p["response"]) for p in pairs])
    other = scorer.score_many([(pairs[j]["prompt"], p["response"])
                               for p, j in zip(pairs, partner)])
    wins = [a.logprob > b.logprob for a, b in zip(own, other)]
    gaps = [a.logprob - b.logprob for a, b in zip(own, other)]
    tokens = sum(s.num_tokens for s in own)
    return {"pairs": len(pairs), "rate": sum(wins) / len(wins),
            "mean_gap_nats": math.fsum(gaps) / len(gaps),
            "own_nll_token_mean": -math.fsum(s.logprob for s in own) / tokens,
            "other_nll_token_mean": -math.fsum(s.logprob for s in other) / tokens,
            "wins": wins}


def source_figures(scorer: Any, documents: Sequence[str]) -> tuple[dict[str, Any], list[list[int]]]:
    """NLL per token and bits per byte of ``documents``, and the scored token ids."""
    scores = scorer.score_many([("", d) for d in documents])
    logprob = math.fsum(s.logprob for s in scores)
    tokens = sum(s.num_tokens for s in scores)
    nbytes = sum(s.num_bytes for s in scores)
    return _figures(-logprob, tokens, nbytes, len(documents)), [list(s.token_ids) for s in scores]


def _figures(nll: float, tokens: int, nbytes: int, docs: int) -> dict[str, Any]:
    return {"documents": docs, "tokens": tokens, "bytes": nbytes, "nll": nll,
            "nll_token_mean": nll / tokens, "bits_per_byte": nll / (math.log(2) * nbytes)}


def unigram_figures(train_token_ids: Sequence[Sequence[int]], vocab_size: int,
                    scored_ids: Sequence[Sequence[int]], nbytes: int) -> dict[str, Any]:
    """Add-one smoothed unigram model of the train tokens, on the held-out token ids."""
    counts: Counter[int] = Counter()
    for ids in train_token_ids:
        counts.update(ids)
    total = sum(counts.values()) + vocab_size
    nll = 0.0
    tokens = 0
    for ids in scored_ids:
        for t in ids:
            nll -= math.log((counts.get(t, 0) + 1) / total)
            tokens += 1
    return _figures(nll, tokens, nbytes, len(scored_ids))
