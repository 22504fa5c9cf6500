"""Rows of shared contexts and packed units as tensors: ids, position ids and a 4D mask.

A row holds units (see :mod:`loglik.plan`) one after the other; a unit is a context followed
by branches, one per request (its targets but the last). Who may attend to whom:

* a token attends only inside its own unit (block-diagonal across packed units);
* context tokens are causal among themselves;
* a branch token attends to the whole context and causally to its own branch, never to a
  sibling branch (a tree);
* position ids restart at 0 per unit and continue after the context in every branch, so each
  request sees exactly the positions it would see alone;
* with a sliding window w, a token sees only keys whose position is within w - 1 of its own.

The plain equivalent of a row is each request forwarded alone as context + targets[:-1];
tests compare the two. Padding tokens attend only to themselves (no row is ever empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .plan import Unit


@dataclass
class RowLayout:
    """A batch of packed rows as tensors, and where each request's targets are predicted.

    ``rows``/``cols`` (N,) index the hidden states that predict ``targets`` (N,), request
    after request in the order of :func:`layout_rows`'s ``order``.
    """

    input_ids: torch.Tensor      # (B, T) int64
    position_ids: torch.Tensor   # (B, T) int64
    unit_ids: torch.Tensor       # (B, T) int64: unit within the row, -1 = padding
    branch_ids: torch.Tensor     # (B, T) int64: -1 = context, j = branch j of the unit
    rows: torch.Tensor           # (N,)
    cols: torch.Tensor           # (N,)
    targets: torch.Tensor        # (N,)
    order: list[int]             # request index of each result, in output order
    lengths: list[int]           # targets per request, in output order


def layout_rows(rows: Sequence[Sequence[Unit]], targets: Sequence[Sequence[int]],
                width: int) -> RowLayout:
    """Token ids, positions and the predicting positions of a batch of packed rows.

    Args:
        rows: units per row (from :func:`loglik.plan.pack_units`).
        targets: target ids of every planned request (indexed by ``Unit.members``).
        width: T, the padded row length (at least the longest row).
    """
    b = len(rows)
    ids = torch.zeros(b, width, dtype=torch.long)                        # (B, T)
    pos = torch.zeros(b, width, dtype=torch.long)                        # (B, T)
    unit_ids = torch.full((b, width), -1, dtype=torch.long)              # (B, T)
    branch_ids = torch.full((b, width), -1, dtype=torch.long)            # (B, T)
    r_idx: list[int] = []
    c_idx: list[int] = []
    tgt: list[int] = []
    order: list[int] = []
    lengths: list[int] = []
    for r, row in enumerate(rows):
        at = 0
        for u, unit in enumerate(row):
            c = len(unit.context)
            ids[r, at:at + c] = torch.tensor(unit.context)
            pos[r, at:at + c] = torch.arange(c)
            unit_ids[r, at:at + c] = u
            last_ctx = at + c - 1                      # predicts every branch's first target
            at += c
            for j, i in enumerate(unit.members):
                t = targets[i]
                n = len(t) - 1
                if n:
                    ids[r, at:at + n] = torch.tensor(t[:-1])
                    pos[r, at:at + n] = torch.arange(c, c + n)
                    unit_ids[r, at:at + n] = u
                    branch_ids[r, at:at + n] = j
                r_idx += [r] * len(t)
                c_idx.append(last_ctx)
                c_idx += range(at, at + n)
                tgt += t
                order.append(i)
                lengths.append(len(t))
                at += n
        if at > width:
            raise ValueError(f"row {r} holds {at} tokens, more than the width {width}")
    return RowLayout(ids, pos, unit_ids, branch_ids, torch.tensor(r_idx), torch.tensor(c_idx),
                     torch.tensor(tgt, dtype=torch.long), order, lengths)


def tree_causal(branch_ids: torch.Tensor) -> torch.Tensor:
    """(..., T) branch ids (-1 = context) -> (..., T, T) bool: causal, and a branch token
    sees the context and its own branch only. Within one unit, that is the whole rule."""
    t = branch_ids.shape[-1]
    idx = torch.arange(t, device=branch_ids.device)
    causal = idx.unsqueeze(1) >= idx.unsqueeze(0)                        # (T, T) k <= q
    kb = branch_ids.unsqueeze(-2)                                        # (..., 1, T) keys
    return causal & ((kb == -1) | (kb == branch_ids.unsqueeze(-1)))      # (..., T, T)


def allowed(layout: RowLayout, sliding_window: int | None = None) -> torch.Tensor:
    """(B, T, T) bool: query q may attend to key k (see the module docstring)."""
    u, br, pos = layout.unit_ids, layout.branch_ids, layout.position_ids
    same_unit = (u.unsqueeze(2) == u.unsqueeze(1)) & (u.unsqueeze(2) >= 0)  # (B, T, T)
    ok = same_unit & tree_causal(br)                                     # (B, T, T)
    if sliding_window:
        ok &= (pos.unsqueeze(2) - pos.unsqueeze(1)) < sliding_window
    pad = u < 0                                                          # (B, T)
    ok |= torch.diag_embed(pad)                                          # padding sees itself
    return ok


def additive_mask(ok: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, T, T) bool -> (B, 1, T, T) additive float mask: 0 where allowed, dtype min elsewhere.

    Additive float masks are what both eager and SDPA attention add to their scores.
    """
    mask = torch.zeros(ok.shape, dtype=dtype, device=ok.device)          # (B, T, T)
    mask.masked_fill_(~ok, torch.finfo(dtype).min)
    return mask.unsqueeze(1)                                             # (B, 1, T, T)
