"""Encoder-decoder models (T5, BART, mT5 via ``AutoModelForSeq2SeqLM``): token ids in,
per-token log-probs out.

A request's ``context_ids`` go through the encoder (with the tokenizer's own special tokens,
put there by :class:`loglik.tokenize_seq2seq.Seq2SeqEncoder`); its ``target_ids`` through the
decoder, which reads ``[decoder_start_token_id] + target_ids[:-1]``: position t predicts
target t. So

    log Pr(y | x) = sum_i log Pr(y_i | x, y_<i)

with the same head as the causal backend: :func:`loglik.logprobs.head_logprobs` over the
decoder's last hidden states at scored positions only, in chunks, fp32 logsumexp. The
head (T5 rescales tied outputs by ``d_model ** -0.5``, BART adds ``final_logits_bias``) is
checked at load against the model's own ``logits``; where they differ the backend uses the
full logits instead (``head_checked``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..errors import BackendError
from ..logprobs import head_logprobs, tolerance
from ..types import Detail, Request, TokenResult
from .base import DISTRIBUTIONS


def is_encoder_decoder(name: str, *, revision: str | None = None,
                       trust_remote_code: bool = False) -> bool:
    """Does the model at ``name`` declare ``is_encoder_decoder`` in its config?"""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(os.path.expanduser(name), revision=revision,
                                            trust_remote_code=trust_remote_code)
    except Exception:   # not loadable here: the causal loader gives the error
        return False
    return bool(getattr(config, "is_encoder_decoder", False))


def load_seq2seq(name: str, *, dtype: Any = "float32", device: str = "cpu",
                 trust_remote_code: bool = False, allow_pickle: bool = False,
                 revision: str | None = None) -> tuple[Any, Any]:
    """Load an encoder-decoder LM and its tokenizer (safetensors only unless allow_pickle)."""
    from .hf import load_hf

    return load_hf(name, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
                   allow_pickle=allow_pickle, revision=revision, kind="seq2seq")


class Seq2SeqBackend:
    """Backend over a ``transformers`` encoder-decoder model (plain padded batches).

    Declares ``distributions`` (:class:`~loglik.backends.base.DistributionSource`: the
    decoder's next-token distributions at target positions), so ``compare``'s KL / top-1
    and ``--words``' word correction work as for causal models.

    Args:
        model: an ``AutoModelForSeq2SeqLM`` in eval mode.
        chunk_size: rows of the output head at once (default: about 64 MiB of fp32 logits).
        max_length: longest encoder or decoder input (default: the config's
            ``max_position_embeddings``; None for relative positions, as in T5).
    """

    capabilities = frozenset({DISTRIBUTIONS})

    def __init__(self, model: Any, *, chunk_size: int | None = None,
                 max_length: int | None = None) -> None:
        config = model.config
        if not getattr(config, "is_encoder_decoder", False):
            raise BackendError("Seq2SeqBackend needs an encoder-decoder model "
                               "(config.is_encoder_decoder); use the causal HF backend")
        self.model = model.eval()   # no dropout: a model fresh from training is in train mode
        self.chunk_size = chunk_size
        self.max_length = max_length or getattr(config, "max_position_embeddings", None)
        self.vocab_size = int(model.get_output_embeddings().weight.shape[0])
        self.start_id = config.decoder_start_token_id
        if self.start_id is None:
            raise BackendError("the model's config has no decoder_start_token_id")
        self.pad_id = config.pad_token_id if config.pad_token_id is not None else 0
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.tolerance = tolerance(self.dtype)   # per sequence, nats (the audit's yardstick)
        self.is_encoder_decoder = True
        self.head_checked = self._check_head()

    def _head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The model's output head on decoder states: (C, H) -> (C, V)."""
        model, config = self.model, self.model.config
        if config.model_type in ("t5", "mt5", "umt5") and getattr(config, "tie_word_embeddings",
                                                                  True):
            hidden = hidden * (config.d_model ** -0.5)
        logits = model.get_output_embeddings()(hidden)
        bias = getattr(model, "final_logits_bias", None)
        return logits + bias if bias is not None else logits

    def _decoder_states(self, input_ids: torch.Tensor, enc_mask: torch.Tensor | None,
                        dec_in: torch.Tensor, dec_mask: torch.Tensor | None) -> torch.Tensor:
        """Encoder, then decoder: the decoder's last hidden states (B, T, H), no logits."""
        enc = self.model.get_encoder()(input_ids=input_ids,
                                       attention_mask=enc_mask).last_hidden_state  # (B, S, H)
        return self.model.get_decoder()(input_ids=dec_in, attention_mask=dec_mask,
                                        encoder_hidden_states=enc,
                                        encoder_attention_mask=enc_mask
                                        ).last_hidden_state                         # (B, T, H)

    def _check_head(self) -> bool:
        """Do the decoder's states through :meth:`_head` give the model's own logits?"""
        ids = torch.tensor([[min(5, self.vocab_size - 1), 1]], device=self.device)  # (1, 2)
        dec = torch.tensor([[self.start_id, min(7, self.vocab_size - 1)]], device=self.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids, decoder_input_ids=dec).logits         # (1, 2, V)
            mine = self._head(self._decoder_states(ids, None, dec, None))           # (1, 2, V)
        return bool(torch.allclose(mine.float(), logits.float(), atol=1e-4, rtol=1e-4))

    def _rows(self, requests: Sequence[Request]) -> torch.Tensor:
        """Decoder states (N, H) predicting every target, request after request (or the
        model's own logits (N, V) there when the head check failed); no grad."""
        live = [r for r in requests if r.target_ids]
        enc_len = max(len(r.context_ids) for r in live)
        dec_len = max(len(r.target_ids) for r in live)
        b = len(live)
        input_ids = torch.full((b, enc_len), self.pad_id, dtype=torch.long)      # (B, S)
        enc_mask = torch.zeros(b, enc_len, dtype=torch.long)                     # (B, S)
        dec_in = torch.full((b, dec_len), self.pad_id, dtype=torch.long)         # (B, T)
        dec_mask = torch.zeros(b, dec_len, dtype=torch.long)                     # (B, T)
        for row, r in enumerate(live):
            ctx, tgt = r.context_ids, r.target_ids
            input_ids[row, :len(ctx)] = torch.tensor(ctx)
            enc_mask[row, :len(ctx)] = 1
            dec_in[row, :len(tgt)] = torch.tensor((self.start_id, *tgt[:-1]))
            dec_mask[row, :len(tgt)] = 1
        args = [t.to(self.device) for t in (input_ids, enc_mask, dec_in, dec_mask)]
        keep = args[3].bool()                                                     # (B, T)
        with torch.no_grad():
            if self.head_checked:
                return self._decoder_states(*args)[keep]                          # (N, H)
            logits = self.model(input_ids=args[0], attention_mask=args[1],
                                decoder_input_ids=args[2], decoder_attention_mask=args[3]
                                ).logits                                          # (B, T, V)
            return logits[keep]                                                   # (N, V)

    def _row_head(self, rows: torch.Tensor) -> torch.Tensor:
        """Logits (C, V) of a slice of :meth:`_rows`."""
        return self._head(rows) if self.head_checked else rows

    # -- DistributionSource ----------------------------------------------------------------
    def prepare(self, requests: Sequence[Request]) -> torch.Tensor:
        """(N, H) decoder states predicting every target, request after request."""
        if not any(r.target_ids for r in requests):
            return torch.zeros(0, 1)
        return self._rows(requests)

    def log_distributions(self, rows: torch.Tensor) -> torch.Tensor:
        """(C, V) fp32 log-softmax of a slice of :meth:`prepare`'s rows."""
        with torch.no_grad():
            logits = self._row_head(rows).float()[:, :self.vocab_size]            # (C, V)
            return torch.log_softmax(logits, dim=-1)                              # (C, V)

    def score(self, requests: Sequence[Request], detail: Detail = Detail()
              ) -> list[TokenResult]:
        """Per target token log-probs for each request, one padded forward per call."""
        results: list[TokenResult] = [TokenResult.empty(detail) for _ in requests]
        live = [i for i, r in enumerate(requests) if r.target_ids]
        if not live:
            return results
        targets = torch.tensor([t for i in live for t in requests[i].target_ids])  # (N,)
        rows = self._rows(requests)                                               # (N, H)
        with torch.no_grad():
            res = head_logprobs(rows, targets.to(rows.device), self._row_head,
                                vocab_size=self.vocab_size, chunk_size=self.chunk_size,
                                rank=detail.rank, entropy=detail.entropy, top_k=detail.top_k)
        start = 0
        for i in live:
            n = len(requests[i].target_ids)
            sl = slice(start, start + n)
            top = None
            if res.top_ids is not None:
                top = [list(zip(ids.tolist(), lps.tolist()))
                       for ids, lps in zip(res.top_ids[sl], res.top_logprobs[sl])]
            results[i] = TokenResult(
                res.logprobs[sl].tolist(), res.greedy[sl].tolist(),
                res.ranks[sl].tolist() if res.ranks is not None else None,
                res.entropies[sl].tolist() if res.entropies is not None else None, top)
            start += n
        return results
