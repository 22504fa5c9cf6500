"""Checks 1-3 of the audit: does the engine compute the same log-probs every way it can?

1. ``kv_cache`` — chain rule two ways: the per-token log-probs of one full forward equal those
   of incremental decoding with the KV cache, one token at a time.
2. ``invariance`` — each example scored alone equals the same example in a mixed-length batch
   (the scorer's own paths: padded, packed, shared context), right- and left-padded through the model's own forward (left
   padding with position ids from the mask), packed into one row (block-diagonal mask,
   positions reset) and with a shared context computed once and reused from the cache.
3. ``normalisation`` — every next-token distribution the backend returns sums to 1
   (logsumexp of all V log-probs is 0) and contains the target's log-prob.

The yardstick is :func:`loglik.logprobs.reference_logprobs` (float64 log-softmax of a full
forward of the example alone). Checks 1 and the model-forward variants of 2 need a Hugging Face
model (``scorer.backend.model``); with another backend they are skipped and say so.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..backends.base import PACKED_ROWS, SHARED_CONTEXT, TORCH_MODEL, supports
from ..backends.hf.adapter import cache_kwarg, out_cache
from ..logprobs import predicting_positions, reference_logprobs
from ..types import Detail, Encoded, Request
from .result import CheckResult
from .seq2seq_checks import encoder_decoder_model

if TYPE_CHECKING:
    from ..scorer import Scorer


def hf_model(scorer: Scorer) -> Any | None:
    """The ``transformers`` model behind a scorer (``torch_model`` capability), or None."""
    return scorer.backend.model if supports(scorer.backend, TORCH_MODEL) else None


def tolerance(scorer: Scorer) -> float:
    """Per-sequence tolerance in nats: what the backend declares for its dtype
    (``tolerance``: 1e-4 in fp32, shared/DESIGN.md; looser in 16-bit), else 1e-6 (an exact
    table such as the fake backend)."""
    return float(getattr(scorer.backend, "tolerance", 1e-6))


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def forward_logits(model: Any, ids: Sequence[Sequence[int]] | Any, **kw: Any) -> Any:
    """``model(input_ids, **kw).logits`` in fp32 on the CPU, gradients off. (B, T, V)"""
    import torch

    with torch.inference_mode():
        t = ids if isinstance(ids, torch.Tensor) else torch.tensor(ids, dtype=torch.long)
        dev = _device(model)
        kw = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
        return model(input_ids=t.to(dev), use_cache=False, **kw).logits.float().cpu()


def _seq(e: Encoded) -> list[int]:
    return list(e.context_ids) + list(e.response_ids)


def _response_part(lp_row: Any, e: Encoded) -> list[float]:
    """The response tokens' entries of a (T-1,) reference row of sequence ``_seq(e)``."""
    return lp_row[predicting_positions(len(e.context_ids), len(e.response_ids))].tolist()


def reference(model: Any, encoded: Sequence[Encoded]) -> list[list[float]]:
    """Response log-probs of each example from a full forward of it alone, in float64."""
    import torch

    out = []
    for e in encoded:
        ids = torch.tensor([_seq(e)])
        out.append(_response_part(reference_logprobs(forward_logits(model, ids), ids)[0], e))
    return out


def _max_diff(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b):
        return math.inf
    return max((abs(x - y) for x, y in zip(a, b)), default=0.0)


def _sum_diff(a: Sequence[float], b: Sequence[float]) -> float:
    return abs(math.fsum(a) - math.fsum(b)) if len(a) == len(b) else math.inf


# -- 1. KV cache ---------------------------------------------------------------------------
def kv_cache_logprobs(model: Any, seq: Sequence[int]) -> list[float]:
    """log Pr(seq[t+1] | seq[:t+1]) for every t, decoding one token at a time with the cache."""
    import torch

    key, dev, cache, out = cache_kwarg(model), _device(model), None, []
    with torch.inference_mode():
        for t in range(len(seq) - 1):
            step = torch.tensor([[seq[t]]], device=dev)                       # (1, 1)
            kw = {key: cache} if cache is not None else {}
            res = model(input_ids=step, use_cache=True, **kw)
            cache = out_cache(res)
            logp = torch.log_softmax(res.logits[0, -1].double(), dim=-1)      # (V,)
            out.append(float(logp[seq[t + 1]]))
    return out


def check_kv_cache(scorer: Scorer, encoded: Sequence[Encoded], *,
                   max_tokens: int = 512) -> CheckResult:
    """Compares every position of each example (its first ``max_tokens`` tokens)."""
    model = hf_model(scorer)
    if model is None and encoder_decoder_model(scorer.backend) is not None:
        return _check_kv_cache_seq2seq(scorer, encoded, max_tokens=max_tokens)
    if model is None:
        return CheckResult("kv_cache", "skip", f"{type(scorer.backend).__name__} exposes no "
                           "model to decode step by step")
    import torch

    tol = tolerance(scorer)
    worst_token, worst_seq, where = 0.0, 0.0, None
    for i, e in enumerate(encoded):
        seq = _seq(e)[:max_tokens]
        ids = torch.tensor([seq])
        full = reference_logprobs(forward_logits(model, ids), ids)[0].tolist()  # (T-1,)
        inc = kv_cache_logprobs(model, seq)
        # the response's terms (those within the first max_tokens tokens)
        d_tok, d_seq = _max_diff(full, inc), _sum_diff(_response_part(torch.tensor(full), e),
                                                       _response_part(torch.tensor(inc), e))
        if d_tok > worst_token:
            pos = max(range(len(full)), key=lambda t: abs(full[t] - inc[t]))
            worst_token, where = d_tok, {"example": i, "position": pos + 1}
        worst_seq = max(worst_seq, d_seq)
    return _kv_result("full forward vs KV-cache decoding", len(encoded), worst_token,
                      worst_seq, tol, where)


def _kv_result(what: str, n: int, worst_token: float, worst_seq: float, tol: float,
               where: dict[str, int] | None) -> CheckResult:
    """The ``kv_cache`` check's verdict from its largest per-token and per-sequence gaps."""
    ok = worst_seq <= tol and worst_token <= tol
    summary = (f"{what} over {n} example(s): max difference {worst_token:.3g} nats per "
               f"token, {worst_seq:.3g} per sequence (tolerance {tol:g})")
    return CheckResult("kv_cache", "pass" if ok else "fail", summary,
                       {"max_abs_diff_token": worst_token, "max_abs_diff_sequence": worst_seq,
                        "tolerance": tol, "worst": where})


def _check_kv_cache_seq2seq(scorer: Scorer, encoded: Sequence[Encoded], *,
                            max_tokens: int) -> CheckResult:
    """The decoder's full forward vs its KV-cache decoding (:mod:`.seq2seq_checks`)."""
    from .seq2seq_checks import kv_cache_logprobs
    from .seq2seq_checks import reference as seq2seq_reference

    model, tol = encoder_decoder_model(scorer.backend), tolerance(scorer)
    worst_token, worst_seq, where = 0.0, 0.0, None
    for i, e in enumerate(encoded):
        e = Encoded(e.context_ids, e.response_ids[:max_tokens], e.response_text, e.boundary)
        if not e.response_ids:
            continue
        full, inc = seq2seq_reference(model, [e])[0], kv_cache_logprobs(model, e)
        d_tok, d_seq = _max_diff(full, inc), _sum_diff(full, inc)
        if d_tok > worst_token:
            pos = max(range(len(full)), key=lambda t: abs(full[t] - inc[t]))
            worst_token, where = d_tok, {"example": i, "position": pos}
        worst_seq = max(worst_seq, d_seq)
    return _kv_result("decoder full forward vs KV-cache decoding (encoder-decoder)",
                      len(encoded), worst_token, worst_seq, tol, where)


# -- 2. invariance -------------------------------------------------------------------------
def _padded(encoded: Sequence[Encoded], side: str) -> tuple[Any, Any, Any, list[int]]:
    """(B, T) ids, mask and position ids, padded on ``side``; offsets of each row's start."""
    import torch

    seqs = [_seq(e) for e in encoded]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)                   # (B, T)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)                  # (B, T)
    offsets = []
    for b, s in enumerate(seqs):
        o = width - len(s) if side == "left" else 0
        ids[b, o:o + len(s)] = torch.tensor(s)
        mask[b, o:o + len(s)] = 1
        offsets.append(o)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)                          # (B, T)
    return ids, mask, positions, offsets


def _batched_forward(model: Any, encoded: Sequence[Encoded], side: str) -> list[list[float]]:
    ids, mask, positions, offsets = _padded(encoded, side)
    kw = {"position_ids": positions} if side == "left" else {}
    logits = forward_logits(model, ids, attention_mask=mask, **kw)          # (B, T, V)
    lp = reference_logprobs(logits, ids)                                    # (B, T-1)
    out = []
    for b, e in enumerate(encoded):
        row = lp[b, offsets[b]:offsets[b] + len(_seq(e)) - 1]               # (T_b - 1,)
        out.append(_response_part(row, e))
    return out


def _packed_forward(model: Any, encoded: Sequence[Encoded]) -> list[list[float]]:
    """All examples in one row: block-diagonal causal mask, positions restart per example."""
    import torch

    seqs = [_seq(e) for e in encoded]
    total = sum(len(s) for s in seqs)
    allowed = torch.zeros(total, total, dtype=torch.bool)                   # (L, L)
    positions, s0 = [], 0
    for s in seqs:
        n = len(s)
        allowed[s0:s0 + n, s0:s0 + n] = torch.ones(n, n, dtype=torch.bool).tril()
        positions += range(n)
        s0 += n
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(1, 1, total, total, dtype=dtype).masked_fill(
        ~allowed, torch.finfo(dtype).min)                                   # (1, 1, L, L)
    ids = torch.tensor([[t for s in seqs for t in s]])                      # (1, L)
    logits = forward_logits(model, ids, attention_mask=mask,
                            position_ids=torch.tensor([positions]))         # (1, L, V)
    out, s0 = [], 0
    for s, e in zip(seqs, encoded):
        n = len(s)
        row = reference_logprobs(logits[:, s0:s0 + n], ids[:, s0:s0 + n])[0]  # (n-1,)
        out.append(_response_part(row, e))
        s0 += n
    return out


def _shared_context(model: Any, encoded: Sequence[Encoded]) -> dict[int, list[float]]:
    """Examples that share a context: the context is run once, its cache reused for each."""
    import torch

    groups: dict[tuple[int, ...], list[int]] = {}
    for i, e in enumerate(encoded):
        if e.response_ids:
            groups.setdefault(e.context_ids, []).append(i)
    key, dev, out = cache_kwarg(model), _device(model), {}
    with torch.inference_mode():
        for ctx, members in groups.items():
            if len(members) < 2:
                continue
            res = model(input_ids=torch.tensor([list(ctx)], device=dev), use_cache=True)
            first = torch.log_softmax(res.logits[0, -1].double(), dim=-1)    # (V,)
            for i in members:
                resp = list(encoded[i].response_ids)
                lps = [float(first[resp[0]])]
                if len(resp) > 1:
                    cont = model(input_ids=torch.tensor([resp[:-1]], device=dev),
                                 use_cache=True, **{key: copy.deepcopy(out_cache(res))})
                    logp = torch.log_softmax(cont.logits[0].double(), dim=-1)  # (n-1, V)
                    lps += logp.gather(-1, torch.tensor(resp[1:], device=dev)
                                       .unsqueeze(-1)).squeeze(-1).tolist()
                out[i] = lps
    return out


def check_invariance(scorer: Scorer, encoded: Sequence[Encoded]) -> CheckResult:
    tol = tolerance(scorer)
    live = [e for e in encoded if e.response_ids]
    requests = [Request(e.context_ids, e.response_ids) for e in live]
    alone = [scorer.backend.score([r])[0].logprobs for r in requests]
    variants: dict[str, list[list[float]] | dict[int, list[float]]] = {}
    unsupported: dict[str, str] = {}
    model = hf_model(scorer)
    seq2seq = encoder_decoder_model(scorer.backend)
    if model is not None:
        variants["reference"] = reference(model, live)
    elif seq2seq is not None:
        from .seq2seq_checks import reference as seq2seq_reference

        variants["reference"] = seq2seq_reference(seq2seq, live)
    variants["scorer_alone"] = alone
    variants["scorer_batched"] = [r.logprobs for r in scorer.backend.score(requests)]
    variants["scorer_batched_reversed"] = [
        r.logprobs for r in scorer.backend.score(requests[::-1])][::-1]
    can_pack = supports(scorer.backend, PACKED_ROWS)
    can_share = supports(scorer.backend, SHARED_CONTEXT)
    for name, pack, share in (("scorer_packed", True, False),     # the scorer's own paths
                              ("scorer_shared_context", False, True),
                              ("scorer_packed_shared", True, True)):
        if (can_pack or not pack) and (can_share or not share):
            planned = copy.copy(scorer)
            planned.pack, planned.share_context = pack, share
            variants[name] = [r.logprobs for r in planned.run_requests(requests)]
    if model is not None:
        for name, fn in (("right_padded", lambda: _batched_forward(model, live, "right")),
                         ("left_padded", lambda: _batched_forward(model, live, "left")),
                         ("packed", lambda: _packed_forward(model, live)),
                         ("shared_context", lambda: _shared_context(model, live))):
            try:
                variants[name] = fn()
            except Exception as exc:  # a model that cannot take the mask: report, not fail
                unsupported[name] = f"{type(exc).__name__}: {str(exc)[:160]}"
    base = variants.get("reference", alone)
    diffs: dict[str, float] = {}
    worst: dict[str, Any] = {}
    for name, values in variants.items():
        if name == "reference":
            continue
        pairs = values.items() if isinstance(values, dict) else enumerate(values)
        d, at = 0.0, None
        for i, lps in pairs:
            di = _sum_diff(base[i], lps)
            if di > d:
                d, at = di, i
        diffs[name] = d
        if d > tol:
            worst[name] = {"example": at, "expected": math.fsum(base[at]),
                           "got": math.fsum(values[at])}
    failed = sorted(worst)
    yardstick = ("a full forward alone" if "reference" in variants else "the scorer alone")
    if failed:
        summary = (f"{', '.join(failed)} disagree with {yardstick} by up to "
                   f"{max(diffs[n] for n in failed):.3g} nats per sequence (tolerance {tol:g})")
    else:
        summary = (f"{len(diffs)} ways of scoring {len(live)} example(s) agree with "
                   f"{yardstick} within {max(diffs.values(), default=0):.3g} nats per "
                   f"sequence (tolerance {tol:g})")
    details: dict[str, Any] = {"max_abs_diff": diffs, "tolerance": tol, "failed": failed,
                               "worst": worst}
    if unsupported:
        details["unsupported"] = unsupported
    if seq2seq is not None:
        from .seq2seq_checks import SKIPPED

        details["skipped"] = SKIPPED
    if "shared_context" in variants and not variants["shared_context"]:
        details["note"] = "no two examples share a context; shared_context had nothing to do"
    return CheckResult("invariance", "fail" if failed else "pass", summary, details)


# -- 3. normalisation ----------------------------------------------------------------------
def check_normalisation(scorer: Scorer, encoded: Sequence[Encoded], *,
                        max_positions: int = 64) -> CheckResult:
    """Ask the backend for all V log-probs at up to ``max_positions`` positions."""
    tol = tolerance(scorer)
    vocab = scorer.backend.vocab_size
    requests, budget = [], max_positions
    for e in encoded:
        if budget <= 0:
            break
        if e.response_ids:
            take = e.response_ids[:budget]
            requests.append(Request(e.context_ids, take))
            budget -= len(take)
    if not requests:
        return CheckResult("normalisation", "skip", "no response tokens to check")
    results = scorer.backend.score(requests, Detail(top_k=vocab))
    worst_lse, worst_target, n = 0.0, 0.0, 0
    for req, res in zip(requests, results):
        for target, lp, alts in zip(req.target_ids, res.logprobs, res.top or []):
            values = [v for _, v in alts]
            top = max(values)
            lse = top + math.log(math.fsum(math.exp(v - top) for v in values))
            worst_lse = max(worst_lse, abs(lse))
            listed = dict(alts).get(target)
            worst_target = max(worst_target,
                               math.inf if listed is None else abs(listed - lp))
            n += 1
    ok = worst_lse <= tol and worst_target <= tol
    summary = (f"{n} next-token distributions over {vocab} tokens: max |logsumexp| "
               f"{worst_lse:.3g}, max |target log-prob - its entry| {worst_target:.3g} "
               f"(tolerance {tol:g})")
    return CheckResult("normalisation", "pass" if ok else "fail", summary,
                       {"positions": n, "vocab_size": vocab, "max_abs_logsumexp": worst_lse,
                        "max_abs_target_diff": worst_target, "tolerance": tol})
