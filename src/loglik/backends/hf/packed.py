"""Packed and shared-context rows for the HF backend: one forward pass per unique token.

:mod:`loglik.masks` lays a :class:`~loglik.plan.PackedBatch` out as ids, position ids and a
tree/block-diagonal mask; this module turns that mask into what a ``transformers`` model
takes (an additive 4D mask, or one per layer type for models that mix sliding-window and
full attention layers), runs the body, and applies the output head only at predicting
positions (:func:`loglik.logprobs.head_logprobs`, fp32 logsumexp), as the plain path does.

Not every model takes a custom 4D mask and explicit position ids (flash-attention and flex
kernels do not; remote code may not). :func:`packing_self_check` scores a small probe both
packed and one request at a time when the backend is built; if they differ, or the packed
forward raises, the backend scores every request alone (``HFBackend.packing`` is False), with
a log message, so a number is never silently wrong.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ...errors import BackendError
from ...masks import additive_mask, allowed, layout_rows
from ...plan import PackedBatch, plan_packed
from ...types import Detail, Request, TokenResult
from . import varlen as vl
from .adapter import ModelAdapter
from .rows import apply_head, max_diff_from_alone

log = logging.getLogger(__name__)

# Attention kernels that cannot take an arbitrary additive 4D mask.
NO_CUSTOM_MASK = ("flash_attention_2", "flash_attention_3", "flex_attention", "paged_attention")


def attention_masks(config: Any, layout: Any, dtype: torch.dtype) -> Any:
    """The ``attention_mask`` argument for a packed batch: a (B, 1, T, T) additive mask, or
    ``{layer_type: mask}`` for models with sliding-window layers (Gemma 2, Qwen 2...)."""
    return mask_for_layers(config, lambda window: allowed(layout, window), dtype)


def mask_for_layers(config: Any, ok: Callable[[int | None], torch.Tensor],
                    dtype: torch.dtype) -> Any:
    """Additive (B, 1, Tq, Tk) mask(s) from ``ok(window) -> (B, Tq, Tk) bool``: one mask, or
    ``{layer_type: mask}`` when full and sliding-window layers are mixed."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types and "sliding_attention" in layer_types:
        return {"full_attention": additive_mask(ok(None), dtype),
                "sliding_attention": additive_mask(ok(window), dtype)}
    if layer_types is None and window and getattr(config, "use_sliding_window", True):
        return additive_mask(ok(window), dtype)                 # Mistral: every layer slides
    return additive_mask(ok(None), dtype)


def mask_to(mask: Any, device: torch.device) -> Any:
    """Move a mask, or a ``{layer_type: mask}`` dict of them, to ``device``."""
    if isinstance(mask, dict):
        return {k: v.to(device) for k, v in mask.items()}
    return mask.to(device)


@torch.inference_mode()
def score_packed(model: ModelAdapter, batch: PackedBatch, requests: Sequence[Request],
                 detail: Detail, *, chunk_size: int | None = None,
                 varlen: bool = False) -> dict[int, TokenResult]:
    """Score the requests of one packed batch; ``{request index: result}``.

    ``Unit.members`` index ``requests``. Each request's log-probs equal scoring it alone
    (context + targets[:-1] in a row of its own) up to float rounding. With ``varlen`` (the
    model switched by :func:`.varlen.enable`) the batch runs one unit at a time inside each
    attention call, without the (B, 1, T, T) mask.
    """
    for unit in (u for row in batch.rows for u in row):
        if not unit.context:
            raise BackendError(f"request {unit.members[0]} has no context tokens to predict from")
    layout = layout_rows(batch.rows, [r.target_ids for r in requests], batch.width)
    dev = model.device
    if varlen:
        states = model.states(input_ids=layout.input_ids.to(dev),
                              **vl.varlen_kwargs(layout, dev, model.dtype))   # (B, T, H|V)
    else:
        mask = mask_to(attention_masks(model.config, layout, model.dtype), dev)
        states = model.states(input_ids=layout.input_ids.to(dev), attention_mask=mask,
                              position_ids=layout.position_ids.to(dev))   # (B, T, H|V)
    hidden = states[layout.rows.to(dev), layout.cols.to(dev)]              # (N, H|V)
    results = apply_head(model, hidden, layout.targets, layout.lengths, detail,
                         chunk_size=chunk_size)
    return dict(zip(layout.order, results))


# Probe: two requests sharing a context (a tree) packed beside a third (block-diagonal).
_PROBE = ((0, 1, 2, 3, 4), (5, 6, 7)), ((0, 1, 2, 3, 4), (6, 5, 4, 3)), ((7, 3), (1, 2, 0))


def packing_self_check(model: ModelAdapter) -> bool:
    """Does a packed, shared-context forward reproduce scoring each request alone?"""
    impl = getattr(model.config, "_attn_implementation", None)
    if impl in NO_CUSTOM_MASK:
        log.info("%s uses %s attention, which takes no custom mask: scoring requests one "
                 "row each (no packing or context sharing)", type(model.model).__name__, impl)
        return False
    v = model.vocab_size
    requests = [Request(tuple(t % v for t in c), tuple(t % v for t in y)) for c, y in _PROBE]
    plan = plan_packed([r.context_ids for r in requests], [len(r.target_ids) for r in requests],
                       batch_tokens=64)
    try:
        packed = score_packed(model, plan.batches[0], requests, Detail())
        diff = max_diff_from_alone(model, requests, packed)
    except Exception as exc:  # a model that rejects 4D masks or position ids
        log.info("%s cannot score packed rows (%s: %s); scoring requests one row each",
                 type(model.model).__name__, type(exc).__name__, exc)
        return False
    if diff > model.tolerance:
        log.warning("%s: packed rows differ from scoring alone by %.3g nats; scoring requests "
                    "one row each (no packing or context sharing)",
                    type(model.model).__name__, diff)
        return False
    return True


# Probe for the varlen path: plain units of different lengths and a tree, in one row.
_VARLEN_PROBE = (((0, 1, 2, 3, 4), (5, 6, 7)), ((7, 3), (1, 2, 0)), ((4, 4, 1), (2, 9)),
                 ((0, 1, 2, 3, 4), (6, 5, 4, 3)))


def varlen_self_check(model: ModelAdapter) -> bool:
    """Does the varlen path (:mod:`.varlen`) reproduce scoring each request alone?

    Switches the model to it first; on any difference or error switches it back to SDPA."""
    why = vl.supported(model.config)
    if why is not None:
        log.info("%s: packed rows keep the dense mask (%s)", type(model.model).__name__, why)
        return False
    v = model.vocab_size
    requests = [Request(tuple(t % v for t in c), tuple(t % v for t in y))
                for c, y in _VARLEN_PROBE]
    plan = plan_packed([r.context_ids for r in requests], [len(r.target_ids) for r in requests],
                       batch_tokens=64)
    try:
        vl.enable(model.model)
        got: dict[int, TokenResult] = {}
        for batch in plan.batches:
            got.update(score_packed(model, batch, requests, Detail(), varlen=True))
        diff = max_diff_from_alone(model, requests, got)
    except Exception as exc:  # a model or a transformers version that does not take it
        log.info("%s cannot score packed rows as varlen segments (%s: %s); keeping the dense "
                 "mask", type(model.model).__name__, type(exc).__name__, exc)
        _back_to_sdpa(model)
        return False
    if diff > model.tolerance:
        log.warning("%s: varlen packed rows differ from scoring alone by %.3g nats; keeping "
                    "the dense mask", type(model.model).__name__, diff)
        _back_to_sdpa(model)
        return False
    return True


def _back_to_sdpa(model: ModelAdapter) -> None:
    try:
        vl.disable(model.model)
    except Exception:  # never switched
        pass
