"""Packed rows without a dense [T, T] mask: variable-length attention over segments.

A packed row of plain units (one request per unit: context + targets[:-1], no shared
context) is a run of independent causal segments. Instead of a (B, 1, T, T) block-diagonal
mask (:mod:`.packed`), the rows are flattened to (B*T,) tokens cut at ``cu_seqlens``, and
each segment attends causally to itself:

* on CUDA in bf16/fp16: ``torch.nn.attention.varlen.varlen_attn`` (flash kernels, no mask);
* anywhere else (CPU, fp32): one ``scaled_dot_product_attention(is_causal=True)`` per
  segment: the same arithmetic, used by the tests and the benchmark's dry run.

The plain equivalent is each request forwarded alone; :func:`varlen_self_check` compares
the two when the path is switched on. It is wired into ``transformers`` as an attention
implementation, ``"loglik_varlen"`` (:func:`enable`), registered beside ``sdpa``: a call
without ``cu_seq_lens_q`` (plain rows, tree rows, KV reuse) is exactly SDPA with SDPA's
masks, so only the packed call changes. Models with sliding windows, soft-capped attention
or a non-SDPA attention keep the dense mask. It is on by default on CUDA only
(``HFBackend(varlen=None)``); ``varlen=True`` forces it (CPU tests), ``False`` keeps it off.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ...masks import RowLayout

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


def plain_units(rows: Sequence[Sequence[Any]]) -> bool:
    """True when no unit of the rows shares its context (tree rows need the dense mask)."""
    return all(len(unit.members) == 1 for row in rows for unit in row)


def _segment_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor,
                  scaling: float | None) -> torch.Tensor:
    """(N, H, D) causal attention per segment with SDPA: the reference and CPU path."""
    out = torch.empty_like(q)                                            # (N, Hq, D)
    rep = q.shape[1] // k.shape[1]
    bounds = cu.tolist()
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs = q[s:e].transpose(0, 1).unsqueeze(0)                         # (1, Hq, L, D)
        ks = k[s:e].transpose(0, 1).repeat_interleave(rep, 0).unsqueeze(0)   # (1, Hq, L, D)
        vs = v[s:e].transpose(0, 1).repeat_interleave(rep, 0).unsqueeze(0)   # (1, Hq, L, D)
        o = torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True,
                                                             scale=scaling)
        out[s:e] = o[0].transpose(0, 1)                                  # (L, Hq, D)
    return out


def varlen_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0,
                     scaling: float | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """``transformers`` attention function: (B, H, T, D) q/k/v -> ((B, T, H, D), None).

    With ``cu_seq_lens_q`` in ``kwargs`` (and no cache: keys as long as queries), causal
    attention inside each segment; otherwise SDPA as ``attn_implementation="sdpa"``."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    b, hq, t, d = query.shape
    if cu is None or key.shape[2] != t:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    q = query.transpose(1, 2).reshape(b * t, hq, d)                     # (N, Hq, D)
    k = key.transpose(1, 2).reshape(b * t, key.shape[1], d)             # (N, Hkv, D)
    v = value.transpose(1, 2).reshape(b * t, value.shape[1], value.shape[-1])
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16):
        from torch.nn.attention.varlen import varlen_attn

        longest = int(kwargs["max_length_q"])
        cu = cu.to(q.device)
        out = varlen_attn(q, k, v, cu, cu, longest, longest, scale=scaling,
                          window_size=(-1, 0), enable_gqa=k.shape[1] != hq)    # (N, Hq, D)
    else:
        out = _segment_loop(q, k, v, cu, scaling)
    return out.reshape(b, t, hq, -1), None


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
    """Register ``"loglik_varlen"`` with ``transformers`` and switch ``model`` to it."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, varlen_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


def disable(model: Any) -> None:
    """Back to SDPA (after a failed self-check)."""
    model.set_attn_implementation("sdpa")


def varlen_kwargs(layout: RowLayout, device: torch.device) -> dict[str, Any]:
    """The forward's arguments for a packed batch on the varlen path: an all-ones 2D mask
    (so ``transformers`` builds no 4D mask and detects no packing), positions and segments."""
    cu, longest = segments(layout)
    return {"attention_mask": torch.ones_like(layout.input_ids).to(device),
            "position_ids": layout.position_ids.to(device),
            "cu_seq_lens_q": cu.to(device), "cu_seq_lens_k": cu.to(device),
            "max_length_q": longest, "max_length_k": longest}
