"""``/v1/completions``: prompts to token ids, echo scoring, generation, the OpenAI shapes.

The completions contract has no prompt/response boundary: with ``echo`` every token of the
prompt is returned, and every token after the first gets log Pr(token | tokens before it);
the first entry of ``token_logprobs`` is ``null`` because nothing predicts it. A text prompt is
tokenized the way ``loglik score`` tokenizes a prompt (BOS per the server's ``--bos`` policy,
never doubled), so a BOS added here is the first, unscored token. A token-id prompt is used
exactly as given. ``max_tokens`` >= 1 generates through the model (greedy at
``temperature`` 0, else sampling with ``top_p``); the log-probs returned for generated tokens
are the model's own (temperature does not change them), computed by the same scorer.

``logprobs=k`` returns the k most probable alternatives per token as
``{token_text: logprob}``, plus the token itself when it is not among them (as vLLM does);
``return_tokens_as_token_ids`` writes tokens as ``"token_id:N"`` so keys never collide.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..types import Detail, Request, TokenResult
from .schemas import APIError, CompletionRequest


@dataclass
class Prompt:
    """One prompt as the model reads it."""

    ids: list[int]
    text: str          # what ``echo`` returns for it
    offsets: list[int]  # text_offset of each id in ``text``


class Pieces:
    """The text of single tokens (cached): a token decoded after an anchor, anchor removed."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok = tokenizer
        anchor = tokenizer.encode_batch(["\n"])[0]
        self.anchor = anchor[-1:] if anchor else []
        self.head = tokenizer.decode(self.anchor) if self.anchor else ""
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        text = self.cache.get(token)
        if text is None:
            full = self.tok.decode(self.anchor + [token])
            text = full[len(self.head):] if full.startswith(self.head) else self.tok.decode([token])
            self.cache[token] = text
        return text


def text_offsets(tokenizer: Any, ids: Sequence[int], start: int, text_len: int) -> list[int]:
    """Offset of each token in the decoded text of ``ids[start:]``; ids before start get 0."""
    out = [0] * len(ids)
    last = 0
    for i in range(start, len(ids)):
        last = max(last, min(len(tokenizer.decode(ids[start:i])), text_len))
        out[i] = last
    return out


def build_prompt(scorer: Any, prompt: str | list[int]) -> Prompt:
    """Token ids (BOS per the scorer's policy for text), echo text and text offsets."""
    tok, enc = scorer.tokenizer, scorer.encoder
    if isinstance(prompt, list):
        text = tok.decode(prompt)
        return Prompt(list(prompt), text, text_offsets(tok, prompt, 0, len(text)))
    ids = tok.encode_batch([prompt])[0] if prompt else []
    start = 0
    if not ids:
        ids, start = [enc.start_token()], 1
    elif enc.add_bos and ids[0] != tok.bos_token_id:
        ids, start = [tok.bos_token_id, *ids], 1
    return Prompt(ids, prompt, text_offsets(tok, ids, start, len(prompt)))


def generate(backend: Any, ids: Sequence[int], req: CompletionRequest, eos: int | None
             ) -> list[int]:
    """New token ids from the model (runs on the model thread); stops at EOS or max_tokens."""
    import torch

    model = getattr(backend, "model", None)
    if model is None or not hasattr(model, "generate"):
        raise APIError(422, "max_tokens: this server's backend cannot generate; send "
                       "max_tokens=0 to score only", "max_tokens")
    device = next(model.parameters()).device
    if req.seed is not None:
        torch.manual_seed(req.seed)
    sample = req.temperature > 0
    kwargs: dict[str, Any] = dict(do_sample=sample, max_new_tokens=req.max_tokens,
                                  pad_token_id=eos if eos is not None else 0)
    if sample:
        kwargs.update(temperature=req.temperature, top_p=req.top_p, top_k=0)
    if eos is not None:
        kwargs["eos_token_id"] = eos
    with torch.no_grad():
        x = torch.tensor([list(ids)], device=device)                   # (1, T)
        out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), **kwargs)
    return out[0, len(ids):].tolist()


def apply_stop(tokenizer: Any, new_ids: list[int], stops: Sequence[str]
               ) -> tuple[list[int], str, bool]:
    """Cut generation before the first stop string: (kept ids, text, stopped)."""
    text = tokenizer.decode(new_ids)
    hits = [text.find(s) for s in stops if s in text]
    if not hits:
        return new_ids, text, False
    cut = min(hits)
    keep = 0
    while keep < len(new_ids) and len(tokenizer.decode(new_ids[:keep + 1])) <= cut:
        keep += 1
    return new_ids[:keep], text[:cut], True


def _alts(res: TokenResult, j: int, token: int, lp: float, piece: Any) -> dict[str, float]:
    alts = {piece(t): finite(a) for t, a in (res.top[j] if res.top is not None else [])}
    alts.setdefault(piece(token), finite(lp))
    return alts


def choice_logprobs(ids: Sequence[int], offsets: Sequence[int], res: TokenResult,
                    first: int, piece: Any, top: bool) -> dict[str, Any]:
    """OpenAI ``logprobs`` of ``ids[first:]``; ``res`` scored ``ids[1:]`` given ``ids[0]``."""
    tokens, lps, tops = [], [], []
    for i in range(first, len(ids)):
        tokens.append(piece(ids[i]))
        if i == 0:
            lps.append(None)
            tops.append(None)
            continue
        lp = res.logprobs[i - 1]
        lps.append(finite(lp))
        tops.append(_alts(res, i - 1, ids[i], lp, piece) if top else None)
    return {"tokens": tokens, "token_logprobs": lps,
            "top_logprobs": tops if top else None, "text_offset": list(offsets[first:])}


def prompt_logprobs(ids: Sequence[int], res: TokenResult, piece: Any) -> list[Any]:
    """vLLM's ``prompt_logprobs``: None, then {"id": {logprob, rank, decoded_token}} per token."""
    out: list[Any] = [None]
    for i in range(1, len(ids)):
        lp = res.logprobs[i - 1]
        entry = {str(ids[i]): {"logprob": finite(lp),
                               "rank": res.ranks[i - 1] if res.ranks is not None else None,
                               "decoded_token": piece(ids[i])}}
        for r, (t, a) in enumerate(res.top[i - 1] if res.top is not None else [], start=1):
            entry.setdefault(str(t), {"logprob": finite(a), "rank": r, "decoded_token": piece(t)})
        out.append(entry)
    return out


def detail_for(req: CompletionRequest) -> Detail:
    k = max(req.logprobs or 0, req.prompt_logprobs or 0)
    return Detail(rank=req.prompt_logprobs is not None, top_k=k)


def to_request(ids: Sequence[int]) -> Request:
    """Score every token after the first."""
    return Request(tuple(ids[:1]), tuple(ids[1:]))


def completion_body(model: str, choices: list[dict[str, Any]], prompt_tokens: int,
                    completion_tokens: int) -> dict[str, Any]:
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


def finite(x: float | None) -> float | None:
    """JSON has no -inf: a log-prob of -inf (a masked token) is sent as the lowest float."""
    if x is None or math.isfinite(x):
        return x
    return -3.4028234663852886e38
