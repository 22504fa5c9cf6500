"""Plain rows: one request per row, right-padded, the head only at predicting positions.

A request's row is ``context + targets[:-1]``; position t predicts token t+1
(:func:`loglik.logprobs.predicting_positions`). Its plain equivalent is the request forwarded
alone, ``gather(log_softmax(model(row).logits), targets)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ...logprobs import head_logprobs, predicting_positions, split_head_output
from ...types import Detail, Request, TokenResult
from .adapter import ModelAdapter


def pad_rows(requests: Sequence[Request], device: torch.device | str = "cpu"
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, T) input ids and attention mask; each row = context + targets[:-1]."""
    seqs = [list(r.context_ids) + list(r.target_ids[:-1]) for r in requests]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)           # (B, T)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)          # (B, T)
    for b, s in enumerate(seqs):
        ids[b, :len(s)] = torch.tensor(s)
        mask[b, :len(s)] = 1
    return ids.to(device), mask.to(device)


def predicting_index(requests: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) rows and (N,) columns of the positions that predict every target, in order."""
    rows: list[int] = []
    cols: list[int] = []
    for b, r in enumerate(requests):
        pos = predicting_positions(len(r.context_ids), len(r.target_ids))
        rows += [b] * len(pos)
        cols += pos.tolist()
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def row_states(model: ModelAdapter, requests: Sequence[Request], *,
               unmasked: bool = False) -> torch.Tensor:
    """(N, H) states (or (N, V) logits off the fast path) that predict every target."""
    ids, mask = pad_rows(requests, model.device)
    rows, cols = predicting_index(requests)
    states = model.states(input_ids=ids, attention_mask=None if unmasked else mask)
    return states[rows.to(states.device), cols.to(states.device)]


@torch.inference_mode()
def score_rows(model: ModelAdapter, requests: Sequence[Request], detail: Detail, *,
               unmasked: bool = False, chunk_size: int | None = None) -> list[TokenResult]:
    """Score requests that all have targets, one right-padded row each."""
    hidden = row_states(model, requests, unmasked=unmasked)                # (N, H|V)
    targets = torch.tensor([t for r in requests for t in r.target_ids], dtype=torch.long)
    return apply_head(model, hidden, targets, [len(r.target_ids) for r in requests], detail,
                      chunk_size=chunk_size)


def apply_head(model: ModelAdapter, hidden: torch.Tensor, targets: torch.Tensor,
               lengths: Sequence[int], detail: Detail, *, chunk_size: int | None = None
               ) -> list[TokenResult]:
    """The chunked head over (N, H) states, cut into one TokenResult per request."""
    head, transform = model.head
    out = head_logprobs(hidden, targets, head, vocab_size=model.vocab_size, transform=transform,
                        chunk_size=chunk_size, rank=detail.rank, entropy=detail.entropy,
                        top_k=detail.top_k)
    return split_head_output(out, lengths)


def max_diff_from_alone(model: ModelAdapter, requests: Sequence[Request],
                        got: dict[int, TokenResult]) -> float:
    """Largest |log-prob difference| between ``got`` (request index -> result, from a fast
    path) and scoring each request alone in a plain row; inf when a request is missing."""
    if sorted(got) != list(range(len(requests))):
        return float("inf")
    alone = [score_rows(model, [r], Detail())[0] for r in requests]
    return max(abs(a - b) for i, res in enumerate(alone)
               for a, b in zip(res.logprobs, got[i].logprobs))


def unmasked_padding_check(model: ModelAdapter) -> bool:
    """Do right-padded rows forwarded without a mask give each row's own logits?

    True for causal models whose positions do not depend on the mask: under a causal mask a
    real token never sees the padding after it, and the kernel then skips the masked-out
    half. A model where they differ (or that needs the mask) keeps the padding mask."""
    v = model.vocab_size
    rows = [Request(tuple(t % v for t in (3, 1, 4, 1, 5)), tuple(t % v for t in (9, 2, 6))),
            Request(tuple(t % v for t in (2, 7)), tuple(t % v for t in (1, 8)))]
    try:
        with torch.inference_mode():
            ids, mask = pad_rows(rows, model.device)
            padded = model.full_logits(input_ids=ids).float()                # (2, T, V)
            for b, r in enumerate(rows):
                n = len(r.context_ids) + len(r.target_ids) - 1
                alone = model.full_logits(input_ids=ids[b:b + 1, :n],
                                          attention_mask=mask[b:b + 1, :n]).float()
                diff = (padded[b, :n] - alone[0]).abs().max().item()
                if diff > 1e-4 * max(1.0, alone.abs().max().item()) * (
                        1 if model.dtype == torch.float32 else 500):
                    return False
    except Exception:  # a model that insists on a mask keeps it
        return False
    return True
