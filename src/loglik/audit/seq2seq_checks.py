"""The audit's model checks for encoder-decoder backends (T5, BART: :mod:`loglik.backends.seq2seq`).

What applies to an encoder-decoder model, and what the audit runs:

* ``kv_cache`` — the decoder's full forward over ``[start] + target[:-1]`` vs decoding one
  target token at a time with the decoder's KV cache (self-attention cache; the encoder's
  output computed once and cross-attended at every step), float64 log-softmax of both.
* ``invariance`` — the yardstick is a full forward of each example alone (encoder on its
  context, decoder on its shifted target, float64 log-softmax, gather), and the scorer's
  alone / batched / reversed-batch paths are compared with it.

Skipped, with the reason in the check's details: the causal model-forward variants of
``invariance`` (left padding with position ids, packed rows, a shared context read from the
cache). The scorer never packs or shares rows of an encoder-decoder model (the backend
declares neither capability), so there is no such path to audit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..types import Encoded

#: the causal variants of ``invariance`` that do not apply, and why
SKIPPED = {
    "left_padded, packed, shared_context": (
        "encoder-decoder model: the scorer feeds each example's context to the encoder and "
        "its target to the decoder in plain right-padded rows (no packing, no shared "
        "context), so only those paths are compared")}


def encoder_decoder_model(backend: Any) -> Any | None:
    """The ``transformers`` encoder-decoder model behind ``backend``, or None."""
    return backend.model if getattr(backend, "is_encoder_decoder", False) else None


def _inputs(model: Any, e: Encoded) -> tuple[Any, Any]:
    import torch

    dev = next(model.parameters()).device
    start = model.config.decoder_start_token_id
    enc = torch.tensor([list(e.context_ids)], device=dev)                      # (1, S)
    dec = torch.tensor([[start, *e.response_ids]], device=dev)                  # (1, n+1)
    return enc, dec


def reference(model: Any, encoded: Sequence[Encoded]) -> list[list[float]]:
    """Target log-probs of each example from one full forward of it alone, in float64."""
    import torch

    out = []
    with torch.inference_mode():
        for e in encoded:
            enc, dec = _inputs(model, e)
            logits = model(input_ids=enc, decoder_input_ids=dec[:, :-1],
                           use_cache=False).logits[0]                            # (n, V)
            logp = torch.log_softmax(logits.double(), dim=-1)                   # (n, V)
            out.append(logp.gather(-1, dec[0, 1:, None])[:, 0].tolist())
    return out


def kv_cache_logprobs(model: Any, e: Encoded) -> list[float]:
    """log Pr(y_t | x, y_<t) decoding one target token at a time with the decoder's cache."""
    import torch

    enc, dec = _inputs(model, e)
    out, cache = [], None
    with torch.inference_mode():
        states = model.get_encoder()(input_ids=enc)                             # (1, S, H)
        for t in range(dec.shape[1] - 1):
            res = model(encoder_outputs=states, decoder_input_ids=dec[:, t:t + 1],
                        past_key_values=cache, use_cache=True)
            cache = res.past_key_values
            logp = torch.log_softmax(res.logits[0, -1].double(), dim=-1)       # (V,)
            out.append(float(logp[dec[0, t + 1]]))
    return out
