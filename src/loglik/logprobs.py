"""The math of log Pr(y|x): pure tensors in, tensors out (no files, tokenizers or models).

Position t predicts token t+1: :func:`predicting_positions` and :func:`shift` are the only
places that shift. Log-softmax is taken in fp32 whatever the model dtype; callers sum the
per-token values in fp64.

The fast path never builds a ``[batch, seq, vocab]`` tensor: :func:`head_logprobs` applies
the output head only to the hidden states that predict a scored token, ``chunk_size`` rows
at a time, so memory is O(chunk_size x vocab). Its plain equivalent is
:func:`reference_logprobs`, ``gather(log_softmax(logits.double()), ids)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .types import TokenResult

# Rows of the output head computed at once: about 64 MiB of fp32 logits per chunk.
CHUNK_BYTES = 64 * 2**20


def chunk_rows(vocab_size: int, copies: int = 1) -> int:
    """Rows per chunk of the output head: ``copies`` (C, V) fp32 blocks near CHUNK_BYTES."""
    return max(16, CHUNK_BYTES // (4 * max(vocab_size, 1) * max(copies, 1)))


def tolerance(dtype: torch.dtype) -> float:
    """Per-sequence agreement in nats to expect between two exact paths of one model: 1e-4
    in fp32/fp64 (shared/DESIGN.md), 5e-2 in 16-bit, where the body's rounding dominates."""
    return 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2


def predicting_positions(context_len: int, num_targets: int, start: int = 0) -> torch.Tensor:
    """Positions (in a row starting at ``start``) whose outputs predict the targets.

    The targets follow a context of ``context_len`` tokens; target i sits at position
    ``start + context_len + i`` and is predicted by the position before it.

    >>> predicting_positions(3, 2).tolist()
    [2, 3]
    """
    if context_len < 1:
        raise ValueError("a target needs at least one context token to be predicted from")
    first = start + context_len - 1
    return torch.arange(first, first + num_targets)  # (n,)


def shift(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Align outputs with the tokens they predict: ``logits[:, :-1]`` with ``labels[:, 1:]``."""
    return logits[:, :-1], labels[:, 1:]  # (B, T-1, V), (B, T-1)


def reference_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Plain per-token log-probs of a full forward, in float64: the yardstick for tests.

    Args:
        logits: (B, T, V) model outputs.
        input_ids: (B, T) the tokens that were read.

    Returns:
        (B, T-1) float64, entry t = log Pr(input_ids[t+1] | input_ids[:t+1]).
    """
    lg, lb = shift(logits, input_ids)                       # (B, T-1, V), (B, T-1)
    logp = torch.log_softmax(lg.double(), dim=-1)           # (B, T-1, V)
    return logp.gather(-1, lb.unsqueeze(-1)).squeeze(-1)    # (B, T-1)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Final-logit soft-capping (Gemma 2): ``cap * tanh(logits / cap)``; identity if no cap."""
    if not cap:
        return logits
    return torch.tanh(logits / cap) * cap


@dataclass
class HeadOutput:
    """Per scored token (all shape (N,)); optional fields are None unless asked for."""

    logprobs: torch.Tensor              # float64
    greedy: torch.Tensor                # bool: no token has a higher logit (rank 1)
    ranks: torch.Tensor | None = None   # int64, 1 = most probable
    entropies: torch.Tensor | None = None  # float64, nats
    top_ids: torch.Tensor | None = None     # (N, k) int64
    top_logprobs: torch.Tensor | None = None  # (N, k) float64


def _logsumexp_inplace(logits: torch.Tensor, top: torch.Tensor, *, fresh: bool) -> torch.Tensor:
    """``logsumexp(logits, -1)`` given the row maxima, overwriting ``logits`` when it is a
    buffer of our own (``fresh``): two passes in place instead of a new (C, V) tensor for
    ``logits - max`` (on CPU the allocation and the extra pass cost as much as the sum)."""
    if not fresh:
        logits = logits.clone()
    safe = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # all -inf rows
    return safe + logits.sub_(safe.unsqueeze(-1)).exp_().sum(dim=-1).log()


def head_logprobs(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    head: Callable[[torch.Tensor], torch.Tensor],
    *,
    vocab_size: int,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    chunk_size: int | None = None,
    rank: bool = False,
    entropy: bool = False,
    top_k: int = 0,
) -> HeadOutput:
    """log Pr(target_i | h_i) for the N hidden states that predict a scored token.

    Equivalent to ``gather(log_softmax(transform(head(hidden)).float()), targets)`` but in
    chunks of ``chunk_size`` rows, so the (N, V) logits never exist at once.

    Args:
        hidden: (N, H) final hidden states at predicting positions.
        targets: (N,) token ids they predict.
        head: the output projection, (C, H) -> (C, V).
        vocab_size: V, used to size chunks.
        transform: applied to the fp32 logits (e.g. soft-capping, logit scaling).
        chunk_size: rows per chunk; default keeps each chunk's fp32 logits near 64 MiB.
        rank, entropy, top_k: extra per-token statistics (see :class:`loglik.types.Detail`).
    """
    n = hidden.shape[0]
    chunk = chunk_size or chunk_rows(vocab_size)
    out_lp = torch.empty(n, dtype=torch.float64)
    out_greedy = torch.empty(n, dtype=torch.bool)
    out_rank = torch.empty(n, dtype=torch.int64) if rank else None
    out_ent = torch.empty(n, dtype=torch.float64) if entropy else None
    k = min(top_k, vocab_size)
    out_top_ids = torch.empty(n, k, dtype=torch.int64) if k else None
    out_top_lp = torch.empty(n, k, dtype=torch.float64) if k else None
    for s in range(0, n, chunk):
        h = hidden[s:s + chunk]                                  # (C, H)
        t = targets[s:s + chunk].to(h.device)                    # (C,)
        logits = head(h).float()                                 # (C, V) fp32
        if transform is not None:
            logits = transform(logits)                           # (C, V)
        tgt = logits.gather(-1, t.unsqueeze(-1)).squeeze(-1)     # (C,)
        top = logits.amax(dim=-1)                                # (C,)
        out_greedy[s:s + chunk] = (tgt >= top).cpu()
        if out_rank is None and out_ent is None and not k:
            lse = _logsumexp_inplace(logits, top, fresh=logits.untyped_storage().data_ptr()
                                     != hidden.untyped_storage().data_ptr())
        else:
            lse = torch.logsumexp(logits, dim=-1)                # (C,)
        out_lp[s:s + chunk] = (tgt - lse).double().cpu()
        if out_rank is not None:
            out_rank[s:s + chunk] = ((logits > tgt.unsqueeze(-1)).sum(-1) + 1).cpu()
        if out_ent is not None:
            p = torch.softmax(logits, dim=-1)                    # (C, V)
            out_ent[s:s + chunk] = (lse - (p * logits).sum(-1)).double().cpu()
        if k:
            vals, ids = logits.topk(k, dim=-1)                   # (C, k)
            out_top_ids[s:s + chunk] = ids.cpu()
            out_top_lp[s:s + chunk] = (vals - lse.unsqueeze(-1)).double().cpu()
    return HeadOutput(out_lp, out_greedy, out_rank, out_ent, out_top_ids, out_top_lp)


def split_head_output(out: HeadOutput, lengths: Sequence[int]) -> list[TokenResult]:
    """Cut a flat :class:`~loglik.logprobs.HeadOutput` into one TokenResult per request."""
    results, s = [], 0
    lp, gr = out.logprobs.tolist(), out.greedy.tolist()
    rk = out.ranks.tolist() if out.ranks is not None else None
    en = out.entropies.tolist() if out.entropies is not None else None
    ti = out.top_ids.tolist() if out.top_ids is not None else None
    tl = out.top_logprobs.tolist() if out.top_logprobs is not None else None
    for n in lengths:
        e = s + n
        results.append(TokenResult(
            lp[s:e], gr[s:e], rk[s:e] if rk is not None else None,
            en[s:e] if en is not None else None,
            [list(zip(a, b)) for a, b in zip(ti[s:e], tl[s:e])] if ti is not None else None))
        s = e
    return results
