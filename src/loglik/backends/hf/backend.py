"""The HF backend: a ``transformers`` causal LM behind the protocol of :mod:`..base`.

The model's body runs once over the rows; the output head is applied only to the hidden
states that predict a scored token (:func:`loglik.logprobs.head_logprobs`), with the model's
own logit transform in fp32. At construction the backend checks, on a few tokens, each fast
path against the plain one and keeps only those the model reproduces, so a number is never
silently wrong:

* head only at predicting positions (``fast``) — else full logits, with a warning;
* right-padded rows without an attention mask (``unmasked_padding``);
* packed and tree rows with a custom 4D mask (``packing``, :mod:`.packed`);
* shared contexts by KV reuse (``kv_sharing``, :mod:`.kv`);
* packed rows one unit (segment) at a time, no dense mask (``varlen``, :mod:`.varlen`; on
  CUDA by default).

On CUDA the output head's chunks are sized to the free GPU memory (:func:`head_chunk_rows`).

Declared capabilities: ``packed_rows`` and ``shared_context`` when ``packing`` holds,
``distributions`` always, ``torch_model`` for a transformers model (not for loglik's own
plain-Llama module, :mod:`.compact`, which has no ``generate``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from ...errors import BackendError
from ...plan import PackedBatch
from ...types import Detail, Request, TokenResult
from ..base import DISTRIBUTIONS, PACKED_ROWS, SHARED_CONTEXT, TORCH_MODEL
from . import kv
from .adapter import ModelAdapter, context_length
from .packed import packing_self_check, score_packed, varlen_self_check
from .rows import row_states, score_rows, unmasked_padding_check

log = logging.getLogger(__name__)

# Output-head chunks on a GPU: fp32 logits up to 1/8 of the free memory, at most 2 GiB.
GPU_HEAD_FRACTION = 8
GPU_HEAD_MAX_BYTES = 2 * 2**30


def head_chunk_rows(device: torch.device, vocab_size: int) -> int | None:
    """Rows per output-head chunk on a CUDA device, from ``torch.cuda.mem_get_info``: a
    chunk's fp32 logits and their low-precision source (~6 bytes per logit, plus one fp32
    copy for the statistics) in 1/8 of the free memory, capped at 2 GiB. None elsewhere
    (the CPU default of :func:`loglik.logprobs.chunk_rows`, ~64 MiB per chunk)."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    budget = min(free // GPU_HEAD_FRACTION, GPU_HEAD_MAX_BYTES)
    return max(16, int(budget // (10 * max(vocab_size, 1))))


class HFBackend:
    """Scores token-id requests with a ``transformers`` causal LM.

    Args:
        model: an ``AutoModelForCausalLM`` (any family whose forward returns ``.logits``).
        chunk_size: output-head rows per chunk (default: about 64 MiB of logits).
        max_length: override the context length read from the model config.
        verdicts: the self-checks' results from an earlier build of the same model
            (:mod:`.verdicts`; keys ``fast``, ``unmasked_padding``, ``packing``,
            ``kv_sharing``); None runs the checks.
        varlen: packed rows attend one unit (segment) at a time, without the dense (B, 1, T,
            T) mask (:mod:`.varlen`): None = on CUDA only (on this CPU the planner's rows hold
            one or two units, so it measured no faster), True = also elsewhere, False = off.
            Switches the model's attention implementation; checked like the other paths.
    """

    def __init__(self, model: Any, *, chunk_size: int | None = None,
                 max_length: int | None = None, verdicts: dict[str, bool] | None = None,
                 varlen: bool | None = None) -> None:
        self.adapter = ModelAdapter(model)
        self.model = self.adapter.model
        self.config = self.adapter.config
        self.device = self.adapter.device
        self.dtype = self.adapter.dtype
        self.tolerance = self.adapter.tolerance
        self.vocab_size = self.adapter.vocab_size
        self.chunk_size = chunk_size or head_chunk_rows(self.device, self.vocab_size)
        self.max_length = max_length or context_length(self.config)
        if verdicts is not None:
            self.adapter.fast = self.adapter.fast and verdicts["fast"]
            self.fast = self.adapter.fast
            self.unmasked_padding = verdicts["unmasked_padding"]
            self.packing = verdicts["packing"]
            self.kv_sharing = self.packing and verdicts["kv_sharing"]
        else:
            self._run_self_checks()
        if varlen is None:
            varlen = self.device.type == "cuda"
        self.varlen = bool(varlen and self.packing and varlen_self_check(self.adapter))
        caps = {DISTRIBUTIONS} if self.adapter.compact else {DISTRIBUTIONS, TORCH_MODEL}
        if self.packing:
            caps |= {PACKED_ROWS, SHARED_CONTEXT}
        self.capabilities = frozenset(caps)

    def _run_self_checks(self) -> None:
        if self.adapter.fast and not self.adapter.self_check():
            log.warning("%s: head-only fast path differs from the model's logits by %.3g; "
                        "scoring from full logits (slower, more memory)",
                        type(self.model).__name__, self.adapter.head_diff)
        self.fast = self.adapter.fast
        self.unmasked_padding = unmasked_padding_check(self.adapter)
        self.packing = packing_self_check(self.adapter)
        self.kv_sharing = self.packing and kv.kv_self_check(self.adapter)

    @property
    def verdicts(self) -> dict[str, bool]:
        """The self-checks' results, to pass as ``verdicts`` to a later build."""
        return {"fast": self.fast, "unmasked_padding": self.unmasked_padding,
                "packing": self.packing, "kv_sharing": self.kv_sharing}

    # -- Backend ---------------------------------------------------------------------------
    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        results: list[TokenResult | None] = [None] * len(requests)
        live = [i for i, r in enumerate(requests) if r.target_ids]
        for i, r in enumerate(requests):
            if not r.context_ids:
                raise BackendError(f"request {i} has no context tokens to predict from")
            if not r.target_ids:
                results[i] = TokenResult.empty(detail)
        if live:
            scored = score_rows(self.adapter, [requests[i] for i in live], detail,
                                unmasked=self.unmasked_padding, chunk_size=self.chunk_size)
            for i, res in zip(live, scored):
                results[i] = res
        return results  # type: ignore[return-value]

    # -- PackedScoring ---------------------------------------------------------------------
    def score_packed(self, batch: PackedBatch, requests: Sequence[Request],
                     detail: Detail = Detail(), batch_tokens: int | None = None
                     ) -> dict[int, TokenResult]:
        """Score a :class:`loglik.plan.PackedBatch`; ``{request index: result}``.

        Heavy branches reuse their context's keys and values (:mod:`.kv`), bounded per step
        by ``batch_tokens`` (rows x keys); the rest run as packed/tree rows."""
        if not self.packing:
            raise BackendError(f"{type(self.model).__name__} failed the packed-rows self-check; "
                               "score its requests with score()")
        if self.kv_sharing and kv.worth_it(batch):
            return kv.score_kv(self.adapter, batch, requests, detail,
                               batch_tokens=max(batch_tokens or 0, batch.padded_tokens),
                               chunk_size=self.chunk_size)
        return score_packed(self.adapter, batch, requests, detail, chunk_size=self.chunk_size,
                            varlen=self.varlen)

    # -- DistributionSource ----------------------------------------------------------------
    def prepare(self, requests: Sequence[Request]) -> torch.Tensor:
        """(N, H) states (or (N, V) logits) predicting every target, request after request."""
        with torch.inference_mode():
            return row_states(self.adapter, requests)

    def log_distributions(self, rows: torch.Tensor) -> torch.Tensor:
        """(C, V) fp32 log-softmax of a slice of :meth:`prepare`'s rows."""
        head, transform = self.adapter.head
        with torch.inference_mode():
            logits = head(rows).float()                                     # (C, V)
            if transform is not None:
                logits = transform(logits)
            return torch.log_softmax(logits, dim=-1)                        # (C, V)
