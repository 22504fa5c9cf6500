"""Shared contexts by KV-cache reuse: each context forwarded once, its branches after it.

A tree row (:mod:`loglik.masks`) lays a context and all its branches in one row under a
dense [T, T] mask. With many or long branches most of that square is masked-out work:
best-of-16 (a 300-token context, 16 responses of 50 tokens) is a 1,100-token row whose
1,100^2 attention scores are ~75% masked. Here such a batch runs in two steps:

1. the rows with their contexts only (a row's units side by side, block-diagonal, positions
   restarting per unit), keeping every layer's keys and values;
2. every branch in a row of its own, with its step-1 row's keys and values as the cache, a
   mask that lets it see its own unit's context and, causally, itself, and positions that
   continue after the context.

A branch's first target is predicted by the last context token (step 1), the rest inside
the branch (step 2). Step 2 runs in groups of at most ``batch_tokens`` (rows x keys), so the
copied cache stays bounded. The arithmetic is the same as scoring each request alone: a
query sees exactly the keys it would see alone, at the same positions.

:func:`kv_self_check` scores a probe this way and alone when the backend is built; a model
whose cache or masks do not allow it (``HFBackend.kv_sharing`` False) keeps tree rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
import torch

from ...masks import allowed, layout_rows
from ...plan import PackedBatch, Unit, plan_packed
from ...types import Detail, Request, TokenResult
from .adapter import ModelAdapter
from .packed import mask_for_layers, mask_to
from .rows import apply_head, max_diff_from_alone

log = logging.getLogger(__name__)


@dataclass
class _Branch:
    row: int          # step-1 row holding the context
    start: int        # the context's first column in that row
    context: int      # context length
    request: int      # request index
    length: int       # branch tokens (targets but the last)


def worth_it(batch: PackedBatch) -> bool:
    """Use KV reuse when the tree rows would attend over more masked than needed pairs: the
    branches outweigh their contexts (best-of-n, long responses), not a few short choices."""
    ctx = sum(len(u.context) for row in batch.rows for u in row if len(u.members) > 1)
    branch = sum(sum(u.branch_lengths) for row in batch.rows for u in row if len(u.members) > 1)
    return branch > ctx


def _branch_mask(group: Sequence[_Branch], width: int, length: int,
                 window: int | None) -> torch.Tensor:
    """(NB, Lb, Tc + Lb) bool: branch token q sees its unit's context and branch keys <= q."""
    nb = len(group)
    q = torch.arange(length)                                             # (Lb,)
    cols = torch.arange(width)                                           # (Tc,)
    start = torch.tensor([b.start for b in group]).unsqueeze(1)          # (NB, 1)
    ctx = torch.tensor([b.context for b in group]).unsqueeze(1)          # (NB, 1)
    in_unit = (cols >= start) & (cols < start + ctx)                     # (NB, Tc)
    prefix = in_unit.unsqueeze(1).expand(nb, length, width).clone()      # (NB, Lb, Tc)
    own = (q.unsqueeze(1) >= q.unsqueeze(0)).expand(nb, length, length).clone()  # (NB,Lb,Lb)
    if window:
        q_pos = ctx.unsqueeze(2) + q.view(1, -1, 1)                      # (NB, Lb, 1)
        k_pos = (cols - start).unsqueeze(1)                              # (NB, 1, Tc)
        prefix &= (q_pos - k_pos) < window
        own &= (q.unsqueeze(1) - q.unsqueeze(0)) < window
    return torch.cat([prefix, own], dim=2)                               # (NB, Lb, Tc+Lb)


@torch.inference_mode()
def score_kv(model: ModelAdapter, batch: PackedBatch, requests: Sequence[Request],
             detail: Detail, batch_tokens: int, *, chunk_size: int | None = None
             ) -> dict[int, TokenResult]:
    """Score one packed batch by KV reuse; ``{request index: result}`` (see module doc)."""
    dev = model.device
    # Step 1: the contexts alone.
    ctx_rows = [tuple(Unit(u.context, (), ()) for u in row) for row in batch.rows]
    width = max(sum(len(u.context) for u in row) for row in ctx_rows)
    layout = layout_rows(ctx_rows, [], width)
    mask = mask_for_layers(model.config, lambda w: allowed(layout, w), model.dtype)
    states1, cache = model.states_with_cache(
        model.new_cache(), input_ids=layout.input_ids.to(dev),
        attention_mask=mask_to(mask, dev), position_ids=layout.position_ids.to(dev))
    layers = [(layer.keys, layer.values) for layer in cache.layers]
    del cache
    branches: list[_Branch] = []
    for r, row in enumerate(batch.rows):
        at = 0
        for unit in row:
            for i in unit.members:
                branches.append(_Branch(r, at, len(unit.context), i,
                                        len(requests[i].target_ids) - 1))
            at += len(unit.context)
    first = states1[torch.tensor([b.row for b in branches], device=dev),
                    torch.tensor([b.start + b.context - 1 for b in branches], device=dev)]
    del states1
    # Step 2: the branches, longest first, in groups of at most batch_tokens rows x keys.
    later: dict[int, torch.Tensor] = {}                  # branch index -> (n, H) states
    todo = sorted((j for j, b in enumerate(branches) if b.length),
                  key=lambda j: -branches[j].length)
    while todo:
        lb = branches[todo[0]].length
        size = max(1, batch_tokens // (width + lb))
        group_idx, todo = todo[:size], todo[size:]
        group = [branches[j] for j in group_idx]
        ids = torch.zeros(len(group), lb, dtype=torch.long)                 # (NB, Lb)
        for g, b in enumerate(group):
            ids[g, :b.length] = torch.tensor(requests[b.request].target_ids[:-1])
        # A short branch's padding keeps its last real position: counting on past it could
        # run beyond a learned position table (GPT-2's n_positions) in a full-length group.
        last = torch.tensor([b.context + b.length - 1 for b in group]).unsqueeze(1)
        pos = torch.minimum(torch.tensor([b.context for b in group]).unsqueeze(1)
                            + torch.arange(lb), last)
        mask2 = mask_for_layers(
            model.config, lambda w, g=group, n=lb: _branch_mask(g, width, n, w), model.dtype)
        rows = torch.tensor([b.row for b in group], device=dev)
        states2, _ = model.states_with_cache(
            model.prefix_cache(layers, rows), input_ids=ids.to(dev),
            attention_mask=mask_to(mask2, dev), position_ids=pos.to(dev))
        for g, j in enumerate(group_idx):
            later[j] = states2[g, :branches[j].length]
        del states2
    hidden = torch.cat([torch.cat([first[j:j + 1], later[j]]) if j in later else first[j:j + 1]
                        for j in range(len(branches))])                    # (N, H or V)
    targets = torch.tensor([t for b in branches for t in requests[b.request].target_ids],
                           dtype=torch.long)
    results = apply_head(model, hidden, targets, [b.length + 1 for b in branches], detail,
                         chunk_size=chunk_size)
    return {b.request: res for b, res in zip(branches, results)}


# Probe: a context with three branches (one of length 0) beside a unit of its own.
_PROBE = (((0, 1, 2, 3, 4), (5, 6, 7)), ((0, 1, 2, 3, 4), (6, 5, 4, 3)),
          ((0, 1, 2, 3, 4), (9,)), ((7, 3), (1, 2, 0)))


def kv_self_check(model: ModelAdapter) -> bool:
    """Does KV reuse reproduce scoring each request alone on this model?"""
    v = model.vocab_size
    requests = [Request(tuple(t % v for t in c), tuple(t % v for t in y)) for c, y in _PROBE]
    plan = plan_packed([r.context_ids for r in requests], [len(r.target_ids) for r in requests],
                       batch_tokens=64)
    try:
        got: dict[int, TokenResult] = {}
        for batch in plan.batches:
            got.update(score_kv(model, batch, requests, Detail(), batch_tokens=12))
        diff = max_diff_from_alone(model, requests, got)
    except Exception as exc:  # a model whose cache or masks do not take this
        log.info("%s cannot reuse a context's keys and values (%s: %s); shared contexts use "
                 "tree rows", type(model.model).__name__, type(exc).__name__, exc)
        return False
    if diff > model.tolerance:
        log.info("%s: KV reuse differs from scoring alone by %.3g nats; shared contexts use "
                 "tree rows", type(model.model).__name__, diff)
        return False
    return True
