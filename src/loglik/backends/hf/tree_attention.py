"""Attention within one shared-context unit (a tree) by parts, without its dense [L, L] mask.

A tree unit is a context of C tokens, then branches laid one after another; a branch token
sees the context and, causally, its own branch (:func:`loglik.masks.tree_causal`). With the
dense (L, L) block, SDPA scores every branch token against every other branch's keys and
masks them away: best-of-16 (a 344-token context, 16 branches of ~50 tokens) computes 1.3M
scores per head and layer where 0.35M are needed. Here the unit takes three exact parts:

1. the context, causal: (C, C), ``is_causal``;
2. every branch token against the context: (N, C), no mask, keeping each query's
   log-sum-exp of scores;
3. every branch against itself, causal: the branches padded to (NB, Lmax), ``is_causal``
   (padding only at a branch's end, so no real query sees it), with the log-sum-exp.

Parts 2 and 3 are one softmax over the context's keys and the branch's keys, split in two:
``o = (e^a o_2 + e^b o_3) / (e^a + e^b)`` with a, b their log-sum-exps (the rule flash
attention uses between key blocks). The arithmetic differs from the dense block only by float
rounding; ``tests/test_varlen.py`` holds it to the dense mask and to scoring alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class TreeParts:
    """Where a tree unit's branches lie: ``context`` leading context tokens, then N branch
    tokens; ``slots`` (NB, Lmax) the branch-token index (0..N-1) of each padded slot (padding
    repeats the branch's last token), ``flat`` (N,) each branch token's slot in the flattened
    (NB * Lmax,) layout."""

    context: int
    slots: torch.Tensor          # (NB, Lmax) int64
    flat: torch.Tensor           # (N,) int64


def tree_parts(branch_ids: torch.Tensor, device: torch.device | str = "cpu"
               ) -> TreeParts | None:
    """The :class:`TreeParts` of one unit's (L,) branch ids (-1 = context), or None when the
    unit is not laid out as a context followed by contiguous branches (the dense mask then)."""
    br = branch_ids.tolist()
    c = 0
    while c < len(br) and br[c] == -1:
        c += 1
    if c == 0 or c == len(br) or -1 in br[c:]:
        return None
    starts = [c] + [i for i in range(c + 1, len(br)) if br[i] != br[i - 1]]
    ends = starts[1:] + [len(br)]
    if len({br[s] for s in starts}) != len(starts):       # a branch split in two runs
        return None
    longest = max(e - s for s, e in zip(starts, ends))
    slots = torch.empty(len(starts), longest, dtype=torch.long)        # (NB, Lmax)
    flat = []
    for j, (s, e) in enumerate(zip(starts, ends)):
        n = e - s
        slots[j, :n] = torch.arange(s - c, e - c)
        slots[j, n:] = e - 1 - c
        flat.extend(range(j * longest, j * longest + n))
    return TreeParts(c, slots.to(device), torch.tensor(flat, dtype=torch.long, device=device))


def attention_lse(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, causal: bool,
                  scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, Lq, D) q, (B, H, Lk, D) k/v -> ((B, H, Lq, D) output, (B, H, Lq) log-sum-exp of
    the scaled scores, in fp32 or float64). ``causal`` aligns the query and key starts (Lq ==
    Lk here).

    On the CPU, SDPA's own flash kernel returns both; elsewhere the scores are formed
    (:func:`attention_lse_math`: a tree unit's parts are small)."""
    if query.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, causal, attn_mask=None, scale=scale)[:2]
        return out, lse.to(_accumulate(query.dtype))
    return attention_lse_math(query, key, value, causal, scale)


def attention_lse_math(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       causal: bool, scale: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_lse` with the scores formed in fp32 (float64 for float64 inputs),
    on any device."""
    s = scale if scale is not None else query.shape[-1] ** -0.5
    acc = _accumulate(query.dtype)
    scores = query.to(acc) @ key.to(acc).transpose(-1, -2) * s                # (B, H, Lq, Lk)
    if causal:
        lq, lk = scores.shape[-2:]
        keep = torch.ones(lq, lk, dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                                     # (B, H, Lq)
    out = torch.exp(scores - lse.unsqueeze(-1)) @ value.to(acc)
    return out.to(query.dtype), lse


def _accumulate(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half types and fp32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def tree_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                   parts: TreeParts, scale: float | None) -> torch.Tensor:
    """(1, Hq, L, D) q, (1, Hkv, L, D) k/v of one tree unit -> (1, Hq, L, D) attention."""
    hq = query.shape[1]
    if key.shape[1] != hq:                                 # grouped-query: heads repeated
        key = key.repeat_interleave(hq // key.shape[1], dim=1)
        value = value.repeat_interleave(hq // value.shape[1], dim=1)
    c = parts.context
    out = torch.empty(query.shape[:-1] + (value.shape[-1],), dtype=query.dtype,
                      device=query.device)                                    # (1, H, L, Dv)
    out[:, :, :c] = F.scaled_dot_product_attention(
        query[:, :, :c], key[:, :, :c], value[:, :, :c], is_causal=True, scale=scale)
    qb, kb, vb = query[:, :, c:], key[:, :, c:], value[:, :, c:]             # (1, H, N, D)
    o_ctx, lse_ctx = attention_lse(qb, key[:, :, :c], value[:, :, :c], False, scale)
    nb, lmax = parts.slots.shape

    def padded(x: torch.Tensor) -> torch.Tensor:                              # -> (NB, H, Lmax, D)
        return x[0][:, parts.slots.flatten()].unflatten(1, (nb, lmax)).transpose(0, 1)

    o_own, lse_own = attention_lse(padded(qb), padded(kb), padded(vb), True, scale)
    o_own = o_own.transpose(0, 1).flatten(1, 2)[:, parts.flat].unsqueeze(0)   # (1, H, N, Dv)
    lse_own = lse_own.transpose(0, 1).flatten(1, 2)[:, parts.flat].unsqueeze(0)  # (1, H, N)
    top = torch.maximum(lse_ctx, lse_own)
    w_ctx = torch.exp(lse_ctx - top).unsqueeze(-1)                            # (1, H, N, 1)
    w_own = torch.exp(lse_own - top).unsqueeze(-1)
    acc = w_ctx.dtype
    merged = (w_ctx * o_ctx.to(acc) + w_own * o_own.to(acc)) / (w_ctx + w_own)
    out[:, :, c:] = merged.to(out.dtype)
    return out
