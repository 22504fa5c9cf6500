"""Packed rows without a dense [T, T] mask: attention one segment (unit) at a time.

A packed row is a run of independent units (:mod:`loglik.masks`): a unit's tokens attend only
to tokens of the same unit. With a (B, 1, T, T) mask, SDPA computes every query against every
key of the row and masks most of it away: for a 2,048-token row of six units, ~6x the
attention work that is needed. Here each unit is a segment of the flattened (B*T,) tokens,
cut at ``cu_seqlens``, and attends to itself only:

* a plain unit (one request: context + targets[:-1]) is causal: on CUDA in bf16/fp16 all
  plain segments of a batch go through ``torch.nn.attention.varlen.varlen_attn`` (flash
  kernels, no mask); elsewhere one ``scaled_dot_product_attention(is_causal=True)`` each;
* a shared-context unit (a tree: the context, then branches that see the context and
  themselves) is attended by parts (:mod:`.tree_attention`: the context causally, the
  branches against the context and each against itself, merged by their log-sum-exps), or,
  if laid out otherwise, with its own (L, L) block of the tree mask;
* padding is not computed (its outputs are never read).

The plain equivalent is each request forwarded alone; :func:`varlen_self_check` compares
the two when the path is switched on. It is wired into ``transformers`` as an attention
implementation, ``"loglik_varlen"`` (:func:`enable`), registered beside ``sdpa``: a call
without ``loglik_segments`` (plain rows, KV reuse) is exactly SDPA with SDPA's masks, so only
the packed call changes; loglik's own Llama module (:mod:`.compact`) reads the same argument.
Models with sliding windows, soft-capped attention or a non-SDPA attention keep the dense
mask. ``HFBackend(varlen=None)`` switches it on on CUDA (where the self-check passes; on the
CPU it measured no faster, bench/README.md), ``varlen=True`` elsewhere too, ``varlen=False``
keeps the dense mask.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from ...masks import RowLayout, additive_mask, tree_causal
from .tree_attention import TreeParts, tree_attention, tree_parts

log = logging.getLogger(__name__)

NAME = "loglik_varlen"


def segments(layout: RowLayout) -> tuple[torch.Tensor, int]:
    """(S+1,) int32 cumulative segment starts over the flattened (B*T,) tokens, and the
    longest segment: a new segment at each row start and each change of unit (padding, -1,
    is one segment per row)."""
    u = layout.unit_ids                                                  # (B, T)
    b, t = u.shape
    start = torch.ones(b, t, dtype=torch.bool)                           # (B, T)
    start[:, 1:] = u[:, 1:] != u[:, :-1]
    first = start.flatten().nonzero().squeeze(1)                         # (S,)
    cu = torch.cat([first, torch.tensor([b * t])]).to(torch.int32)      # (S+1,)
    return cu, int((cu[1:] - cu[:-1]).max())


@dataclass(frozen=True)
class Segment:
    """One unit of a packed batch: row ``row``, columns ``start:end``. A plain (causal) unit
    has neither ``tree`` nor ``mask``; a shared-context unit has its :class:`TreeParts`, or
    ``mask``, its additive (1, 1, L, L) block of the tree mask."""

    row: int
    start: int
    end: int
    mask: torch.Tensor | None = None
    tree: TreeParts | None = None


@dataclass(frozen=True)
class SegmentPlan:
    """The segments of a packed batch, computed once per forward and used by every layer."""

    segments: tuple[Segment, ...]
    cu_seqlens: torch.Tensor     # (S+1,) int32 over the flattened (B*T,) tokens, padding too
    longest: int
    all_plain: bool              # no unit shares its context: the flash varlen kernel applies


def segment_plan(layout: RowLayout, dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> SegmentPlan:
    """The :class:`SegmentPlan` of a laid-out packed batch; masks in ``dtype`` on ``device``."""
    cu, longest = segments(layout)
    t = layout.unit_ids.shape[1]
    units = layout.unit_ids.flatten().tolist()
    branches = layout.branch_ids.flatten()
    out = []
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        if units[s] < 0:
            continue                                                   # padding
        br = branches[s:e]
        mask = tree = None
        if int(br.max()) > 0:                                          # more than one branch
            tree = tree_parts(br, device)
            if tree is None:
                mask = additive_mask(tree_causal(br).unsqueeze(0), dtype).to(device)  # (1,1,L,L)
        out.append(Segment(s // t, s % t, s % t + (e - s), mask, tree))
    return SegmentPlan(tuple(out), cu, longest,
                       all(g.mask is None and g.tree is None for g in out))


def segment_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      plan: SegmentPlan, scaling: float | None = None) -> torch.Tensor:
    """(B, Hq, T, D) q, (B, Hkv, T, D) k/v -> (B, T, Hq, D): SDPA within each segment.

    Padding positions come out zero (nothing reads them)."""
    b, hq, t, d = query.shape
    gqa = key.shape[1] != hq
    out = query.new_zeros(b, t, hq, value.shape[-1])                    # (B, T, Hq, D)
    for g in plan.segments:
        cols = slice(g.start, g.end)
        q, k, v = (x[g.row:g.row + 1, :, cols] for x in (query, key, value))  # (1, H, L, D)
        if g.tree is not None:
            o = tree_attention(q, k, v, g.tree, scaling)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=g.mask,
                                               is_causal=g.mask is None, scale=scaling,
                                               enable_gqa=gqa)          # (1, Hq, L, D)
        out[g.row, cols] = o[0].transpose(0, 1)
    return out


def _segment_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                  scaling: float | None) -> torch.Tensor:
    """(N, H, D) causal attention per segment with SDPA: the CUDA kernel's reference."""
    out = torch.empty_like(q)                                            # (N, Hq, D)
    gqa = q.shape[1] != k.shape[1]
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (x[s:e].transpose(0, 1).unsqueeze(0) for x in (q, k, v))  # (1, H, L, D)
        o = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=scaling,
                                           enable_gqa=gqa)
        out[s:e] = o[0].transpose(0, 1)                                  # (L, Hq, D)
    return out


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``transformers`` attention function: (B, H, T, D) q/k/v -> ((B, T, H, D), None).

    With ``loglik_segments`` (a :class:`SegmentPlan`) in ``kwargs`` and no cache (keys as
    long as queries), attention within each segment; otherwise SDPA as
    ``attn_implementation="sdpa"``."""
    plan = kwargs.get("loglik_segments")
    if plan is None or key.shape[2] != query.shape[2]:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop("loglik_segments", None)
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    return attend(query, key, value, plan, scaling), None


def attend(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, plan: SegmentPlan,
           scaling: float | None) -> torch.Tensor:
    """(B, H, T, D) q/k/v -> (B, T, Hq, D) attention within ``plan``'s segments."""
    b, hq, t, d = query.shape
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and plan.all_plain:
        from torch.nn.attention.varlen import varlen_attn

        q = query.transpose(1, 2).reshape(b * t, hq, d)                 # (N, Hq, D)
        k = key.transpose(1, 2).reshape(b * t, key.shape[1], d)         # (N, Hkv, D)
        v = value.transpose(1, 2).reshape(b * t, value.shape[1], value.shape[-1])
        cu = plan.cu_seqlens.to(q.device)
        out = varlen_attn(q, k, v, cu, cu, plan.longest, plan.longest, scale=scaling,
                          window_size=(-1, 0), enable_gqa=k.shape[1] != hq)    # (N, Hq, D)
        return out.reshape(b, t, hq, -1)
    return segment_attention(query, key, value, plan, scaling)


def supported(config: Any) -> str | None:
    """Why this model cannot take the varlen path (None when it can)."""
    impl = getattr(config, "_attn_implementation", None)
    if impl not in ("sdpa", NAME):
        return f"its attention is {impl!r}, not sdpa"
    if getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True):
        return "it has sliding-window layers"
    if getattr(config, "attn_logit_softcapping", None):
        return "it soft-caps attention logits"
    return None


def enable(model: Any) -> None:
    """Register ``"loglik_varlen"`` with ``transformers`` and switch ``model`` to it (loglik's
    own module needs nothing: it reads ``loglik_segments`` itself)."""
    if getattr(model, "is_compact", False):
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


def disable(model: Any) -> None:
    """Back to SDPA (after a failed self-check)."""
    if getattr(model, "is_compact", False):
        return
    model.set_attn_implementation("sdpa")


def varlen_kwargs(layout: RowLayout, device: torch.device, dtype: torch.dtype
                  ) -> dict[str, Any]:
    """The forward's arguments for a packed batch on the segment path: an all-ones 2D mask
    (so ``transformers`` builds no 4D mask), positions and the :class:`SegmentPlan`."""
    return {"attention_mask": torch.ones_like(layout.input_ids).to(device),
            "position_ids": layout.position_ids.to(device),
            "loglik_segments": segment_plan(layout, dtype, device)}
