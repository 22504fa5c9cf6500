"""Full next-token distributions at response positions, reduced chunk by chunk.

Some statistics need the whole next-token distribution, not just the scored token's
log-prob: the KL divergence between two models, the probability mass of word-initial
tokens (the word-probability correction in :mod:`loglik.metrics`). :func:`position_stats`
computes them without ever holding ``[batch, seq, vocab]`` logits: per planned batch the
model body runs once, the hidden states at the predicting positions are kept (N, H), and the
output head is applied ``chunk_rows`` rows at a time; a reduction turns each (C, V) chunk of
fp32 log-probs into a few numbers per row.

Its naive equivalent, per request and per backend::

    logp = log_softmax(model(context + targets).logits[0, predicting positions].float())
    fn([logp_model_1, logp_model_2, ...], targets)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .backends.base import DISTRIBUTIONS, Backend, DistributionSource, supports
from .errors import ConfigError
from .logprobs import chunk_rows as default_chunk_rows
from .plan import plan_batches
from .types import Request

# (log-probs per backend, each (C, V) fp32; targets (C,)) -> (C, K) statistics
Reduction = Callable[[list[torch.Tensor], torch.Tensor], torch.Tensor]


def distribution_source(backend: Any) -> DistributionSource:
    """``backend`` as a :class:`~loglik.backends.base.DistributionSource`, or a ConfigError
    naming what to use instead."""
    if not supports(backend, DISTRIBUTIONS):
        raise ConfigError(f"{type(backend).__name__} does not expose full next-token "
                          "distributions, which this statistic needs; use a backend that "
                          "declares the 'distributions' capability (the Hugging Face backend: "
                          "Scorer.from_pretrained / Scorer.from_hf)")
    return backend


def position_stats(backends: Sequence[Backend], requests: Sequence[Request], fn: Reduction, *,
                   batch_tokens: int = 8192, chunk_rows: int | None = None,
                   final: bool = False) -> list[torch.Tensor]:
    """Per request, ``fn`` applied to every backend's distributions at its target positions.

    Args:
        backends: one or more backends with the same vocabulary, fed the same token ids.
        requests: token-id requests (context, targets).
        fn: reduction ``(logps, targets) -> (C, K)``; ``logps[j]`` is backend j's (C, V)
            fp32 log-softmax at C positions, ``targets`` the (C,) tokens they predict.
        batch_tokens: padded tokens per forward pass.
        chunk_rows: rows of the output head at once (default: ~64 MiB of logits per backend).
        final: also give the distribution after the last target (its target is 0, a
            placeholder), so each result has ``len(targets) + 1`` rows.

    Returns:
        One float64 (n, K) tensor per request, in request order.
    """
    if not backends:
        raise ConfigError("position_stats needs at least one backend")
    vocab = {int(b.vocab_size) for b in backends}
    if len(vocab) != 1:
        raise ConfigError(f"backends disagree on the vocabulary size ({sorted(vocab)}); full "
                          "distributions can only be compared over one vocabulary")
    (vocab_size,) = vocab
    sources = [distribution_source(b) for b in backends]
    reqs = [Request(r.context_ids, tuple(r.target_ids) + ((0,) if final else ()))
            for r in requests]
    for i, r in enumerate(reqs):
        if r.target_ids and not r.context_ids:
            raise ConfigError(f"request {i} has no context tokens to predict from")
    chunk = chunk_rows or default_chunk_rows(vocab_size, copies=len(sources))
    lengths = [len(r.context_ids) + len(r.target_ids) - 1 if r.target_ids else 0 for r in reqs]
    results: list[torch.Tensor | None] = [None] * len(reqs)
    for batch in plan_batches(lengths, batch_tokens).batches:
        batch_reqs = [reqs[i] for i in batch.indices]
        rows = [src.prepare(batch_reqs) for src in sources]
        targets = torch.tensor([t for r in batch_reqs for t in r.target_ids], dtype=torch.long)
        parts = []
        for s in range(0, len(targets), chunk):
            logps = [src.log_distributions(rw[s:s + chunk]) for src, rw in zip(sources, rows)]
            out = fn(logps, targets[s:s + chunk].to(logps[0].device))     # (C, K)
            parts.append(out.double().cpu().reshape(len(logps[0]), -1))      # (C, K)
        flat = torch.cat(parts)                                           # (N, K)
        start = 0
        for i, r in zip(batch.indices, batch_reqs):
            results[i] = flat[start:start + len(r.target_ids)]
            start += len(r.target_ids)
    width = None
    for res in results:
        if res is not None:
            width = res.shape[1]
            break
    return [res if res is not None else torch.zeros(0, width or 0, dtype=torch.float64)
            for res in results]
