"""Hugging Face transformers backend: the default, and the reference for exactness.

The model's body (``model.base_model``) runs once over right-padded rows; the output head is
applied only to the hidden states that predict a scored token (:func:`loglik.logprobs.head_logprobs`),
with the model's own logit transform (Gemma 2 soft-capping, Cohere/Granite logit scaling)
in fp32. On construction a self-check compares that path with ``model(...).logits`` on a few
tokens; a model whose head the fast path does not reproduce is scored from full logits
instead, with a warning, so a number is never silently wrong.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BackendError, ModelLoadError
from ..logprobs import head_logprobs, softcap
from ..types import Detail, Request, TokenResult

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, "
                             + ", ".join(sorted(_DTYPES))) from None


def load_hf(name: str, *, dtype: str | torch.dtype | None = "float32", device: str = "cpu",
            trust_remote_code: bool = False, allow_pickle: bool = False,
            revision: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder or a hub id.

    Weights load from safetensors only unless ``allow_pickle``; remote code runs only with
    ``trust_remote_code``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.expanduser(name)
    # A hub id is "name" or "org/name"; anything else is meant as a local folder.
    looks_local = (name.startswith((".", "/", "~")) or name.count("/") > 1
                   or os.path.exists(path))
    if looks_local and not os.path.isdir(path):
        raise ModelLoadError(f"model {name!r} not found: no such directory; pass a folder "
                             "written by save_pretrained or a Hugging Face model id")
    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kw)
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError...
        raise ModelLoadError(f"cannot load a tokenizer for {name!r}: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=resolve_dtype(dtype), use_safetensors=None if allow_pickle else True,
            **kw)
    except Exception as exc:
        hint = ("" if allow_pickle else "; if it only has pickle (.bin) weights and you trust "
                "them, pass allow_pickle=True (--allow-pickle)")
        raise ModelLoadError(f"cannot load model {name!r}: {exc}{hint}") from exc
    return model.to(device).eval(), tokenizer


def _logit_transform(config: Any):
    """The model's own post-head logit transform, applied to fp32 logits (None if none)."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)            # Cohere: logits * scale
    divide = getattr(config, "logits_scaling", None)         # Granite: logits / scaling
    if not (cap or (scale and scale != 1) or (divide and divide != 1)):
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale and scale != 1:
            logits = logits * scale
        if divide and divide != 1:
            logits = logits / divide
        return softcap(logits, cap)

    return transform


class HFBackend:
    """Scores token-id requests with a ``transformers`` causal LM.

    Args:
        model: an ``AutoModelForCausalLM`` (any family whose forward returns ``.logits``).
        chunk_size: output-head rows per chunk (default: about 64 MiB of logits).
        max_length: override the context length read from the model config.
    """

    def __init__(self, model: Any, *, chunk_size: int | None = None,
                 max_length: int | None = None) -> None:
        self.model = model.eval()
        self.config = model.config
        self.chunk_size = chunk_size
        self.device = next(model.parameters()).device
        head = model.get_output_embeddings()
        self.vocab_size = int(head.weight.shape[0]) if head is not None else int(
            self.config.vocab_size)
        self.max_length = max_length or _context_length(self.config)
        self._body = model.base_model if model.base_model is not model else None
        self._head = head
        self._transform = _logit_transform(self.config)
        self.dtype = next(model.parameters()).dtype
        self.fast = self._body is not None and head is not None and self._self_check()
        # Right-padded rows need no attention mask: under a causal mask a real token never
        # sees the padding after it, and the kernel then skips the masked-out half.
        self.unmasked_padding = self._unmasked_padding_check()
        # Packed / shared-context rows (backends/hf_packed.py), if this model reproduces
        # scoring alone with a custom 4D mask; otherwise every request gets a row of its own.
        from .hf_packed import packing_self_check

        self.packing = packing_self_check(self)
        # Shared contexts with heavy branches: the context's keys and values reused
        # (backends/hf_kv.py) instead of one tree row, where the model allows it.
        from .hf_kv import kv_self_check

        self.kv_sharing = self.packing and kv_self_check(self)

    # -- forward -------------------------------------------------------------------------
    def _rows(self, requests: Sequence[Request]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded (B, T) input ids and attention mask; each row = context + targets[:-1]."""
        seqs = [list(r.context_ids) + list(r.target_ids[:-1]) for r in requests]
        width = max(len(s) for s in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)           # (B, T)
        mask = torch.zeros(len(seqs), width, dtype=torch.long)          # (B, T)
        for b, s in enumerate(seqs):
            ids[b, :len(s)] = torch.tensor(s)
            mask[b, :len(s)] = 1
        return ids.to(self.device), mask.to(self.device)

    def _hidden(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out = self._body(input_ids=ids, attention_mask=mask, use_cache=False)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]  # (B,T,H)

    def _full_logits(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # (B,T,V)

    def _unmasked_padding_check(self) -> bool:
        """Do right-padded rows forwarded without a mask give each row's own logits?

        True for causal models whose positions do not depend on the mask; a model where
        they differ (or that needs the mask) keeps the padding mask."""
        v = self.vocab_size
        rows = [Request(tuple(t % v for t in (3, 1, 4, 1, 5)), tuple(t % v for t in (9, 2, 6))),
                Request(tuple(t % v for t in (2, 7)), tuple(t % v for t in (1, 8)))]
        try:
            with torch.inference_mode():
                ids, mask = self._rows(rows)
                padded = self._full_logits(ids, None).float()                 # (2, T, V)
                for b, r in enumerate(rows):
                    n = len(r.context_ids) + len(r.target_ids) - 1
                    alone = self._full_logits(ids[b:b + 1, :n], mask[b:b + 1, :n]).float()
                    diff = (padded[b, :n] - alone[0]).abs().max().item()
                    if diff > 1e-4 * max(1.0, alone.abs().max().item()) * (
                            1 if self.dtype == torch.float32 else 500):
                        return False
        except Exception:  # a model that insists on a mask keeps it
            return False
        return True

    def _self_check(self) -> bool:
        """Does body + head (+ transform) reproduce ``model(...).logits``? Log if not."""
        n = min(8, self.vocab_size)
        ids = torch.arange(n, device=self.device).unsqueeze(0)              # (1, n)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            ref = self._full_logits(ids, mask).float()                      # (1, n, V)
            logits = self._head(self._hidden(ids, mask)).float()            # (1, n, V)
            if self._transform is not None:
                logits = self._transform(logits)
        low_precision = next(self.model.parameters()).dtype != torch.float32
        tol = 5e-2 if low_precision else 1e-3
        diff = (ref - logits).abs().max().item() / max(1.0, ref.abs().max().item())
        if diff > tol:
            log.warning("%s: head-only fast path differs from the model's logits by %.3g; "
                        "scoring from full logits (slower, more memory)",
                        type(self.model).__name__, diff)
            return False
        return True

    # -- protocol ------------------------------------------------------------------------
    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        results: list[TokenResult | None] = [None] * len(requests)
        live = [i for i, r in enumerate(requests) if r.target_ids]
        for i, r in enumerate(requests):
            if not r.context_ids:
                raise BackendError(f"request {i} has no context tokens to predict from")
            if not r.target_ids:
                results[i] = TokenResult.empty(detail)
        if live:
            for i, res in zip(live, self._score_rows([requests[i] for i in live], detail)):
                results[i] = res
        return results  # type: ignore[return-value]

    def score_packed(self, batch: Any, requests: Sequence[Request], detail: Detail = Detail(),
                     batch_tokens: int | None = None) -> dict[int, TokenResult]:
        """Score a :class:`loglik.plan.PackedBatch`; ``{request index: result}``.

        ``batch_tokens`` bounds each step of KV reuse (rows x keys), as it bounds a batch."""
        from .hf_kv import score_kv, worth_it
        from .hf_packed import score_packed

        if getattr(self, "kv_sharing", False) and worth_it(batch):
            return score_kv(self, batch, requests, detail,
                            batch_tokens=max(batch_tokens or 0, batch.padded_tokens))
        return score_packed(self, batch, requests, detail)

    @torch.inference_mode()
    def _score_rows(self, requests: Sequence[Request], detail: Detail) -> list[TokenResult]:
        ids, mask = self._rows(requests)
        if getattr(self, "unmasked_padding", False):
            mask = None
        rows, cols, targets = [], [], []
        for b, r in enumerate(requests):
            start = len(r.context_ids) - 1                 # position t predicts token t+1
            rows += [b] * len(r.target_ids)
            cols += range(start, start + len(r.target_ids))
            targets += r.target_ids
        rows_t, cols_t = torch.tensor(rows), torch.tensor(cols)
        targets_t = torch.tensor(targets, dtype=torch.long)                 # (N,)
        if self.fast:
            hidden = self._hidden(ids, mask)[rows_t, cols_t]                # (N, H)
            head, transform = self._head, self._transform
        else:
            hidden = self._full_logits(ids, mask)[rows_t, cols_t]           # (N, V)
            head, transform = (lambda x: x), None
        out = head_logprobs(hidden, targets_t, head, vocab_size=self.vocab_size,
                            transform=transform, chunk_size=self.chunk_size, rank=detail.rank,
                            entropy=detail.entropy, top_k=detail.top_k)
        return split_head_output(out, [len(r.target_ids) for r in requests])


def split_head_output(out: Any, lengths: Sequence[int]) -> list[TokenResult]:
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


def _context_length(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
