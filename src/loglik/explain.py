"""Why a response got its score: the per-token decomposition, every term visible.

    log Pr(y | x) = sum_i log Pr(y_i | x, y_<i)

:func:`explain` scores one pair with ranks, entropies and the top-k alternatives and returns
an :class:`Explanation`: one :class:`TokenRow` per response token with its log-prob, its
probability, the running sum (the last row's is ``logprob``), the rank of the true token,
the entropy of the next-token distribution and the alternatives. Token text is shown with
whitespace and bytes made visible (``␣`` space, ``↵`` newline, ``→`` tab, ``<0xE4>`` for a
token that is only part of a UTF-8 character). :func:`from_score` builds the same rows from
any :class:`~loglik.types.Score` (used by the HTML report of ``loglik score --html``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from .types import Example, Score

if TYPE_CHECKING:
    from .scorer import Scorer


_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "→", "\r": "␍"}


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: printable stand-in character -> byte."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def is_byte_level(tokenizer: Any) -> bool:
    """Does the tokenizer write bytes as GPT-2's printable stand-ins (``Ġ`` for a space)?"""
    declared = getattr(tokenizer, "byte_level", None)     # adapters that know (GGUF)
    if declared is not None:
        return bool(declared)
    hf = getattr(tokenizer, "hf", tokenizer)
    backend = getattr(hf, "backend_tokenizer", None)
    return backend is not None and "ByteLevel" in repr(getattr(backend, "decoder", None))


def token_bytes(raw: str, *, byte_level: bool | None = None) -> bytes:
    """The UTF-8 bytes a vocabulary entry stands for.

    ``<0xE4>`` (byte fallback) is that byte; ``▁`` (SentencePiece's word marker) is a space;
    a byte-level BPE entry (``Ġcat``) maps through GPT-2's alphabet. ``byte_level=None``
    guesses from the characters (entries with ``Ġ``-range characters, all in the alphabet).

    >>> token_bytes("<0xE4>"), token_bytes("▁cat"), token_bytes("Ġcat", byte_level=True)
    (b'\\xe4', b' cat', b' cat')
    """
    m = _BYTE_TOKEN.fullmatch(raw)
    if m:
        return bytes([int(m.group(1), 16)])
    if "▁" in raw:
        return raw.replace("▁", " ").encode("utf-8")
    table = _byte_decoder()
    if byte_level is None:
        byte_level = any(0x100 <= ord(c) <= 0x143 for c in raw) and all(c in table for c in raw)
    if byte_level and raw and all(c in table for c in raw):
        return bytes(table[c] for c in raw)
    return raw.encode("utf-8")


def visible(data: bytes) -> str:
    """Text with whitespace, control characters and partial UTF-8 characters made visible.

    >>> visible(b" a\\n"), visible(b"\\xe4\\xb8")
    ('␣a↵', '<0xE4><0xB8>')
    """
    out = []
    text = data.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:                  # a byte that is not valid UTF-8 here
            out.append(f"<0x{code - 0xDC00:02X}>")
        elif ch in _VISIBLE:
            out.append(_VISIBLE[ch])
        elif code < 32 or code == 127:
            out.append(f"<0x{code:02X}>")
        else:
            out.append(ch)
    return "".join(out)


@dataclass
class Alternative:
    """One of the most probable next tokens at a position."""

    token: str        # visible text
    logprob: float

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)


@dataclass
class TokenRow:
    """One term of the decomposition: log Pr(y_i | x, y_<i) and what surrounds it."""

    position: int             # 0-based index among the response tokens
    token_id: int
    raw: str                  # the vocabulary entry (e.g. "Ġcat", "▁cat", "<0xE4>")
    data: bytes               # the UTF-8 bytes it stands for
    logprob: float
    cumulative: float         # sum of the log-probs up to and including this token
    greedy: bool
    rank: int | None = None
    entropy: float | None = None
    top: list[Alternative] = field(default_factory=list)

    @property
    def token(self) -> str:
        """The token as text, whitespace and bytes visible."""
        return visible(self.data)

    @property
    def prob(self) -> float:
        return math.exp(self.logprob)

    def to_dict(self) -> dict[str, Any]:
        return {"position": self.position, "token": self.token, "token_id": self.token_id,
                "raw": self.raw, "logprob": self.logprob, "prob": self.prob,
                "cumulative": self.cumulative, "rank": self.rank, "entropy": self.entropy,
                "greedy": self.greedy,
                "top": [{"token": a.token, "logprob": a.logprob, "prob": a.prob}
                        for a in self.top]}


@dataclass
class Explanation:
    """The per-token decomposition of one score. ``rows[-1].cumulative == logprob``."""

    prompt: str | None
    response: str | None
    logprob: float
    rows: list[TokenRow]
    boundary: str
    num_bytes: int
    id: Any = None
    messages: list[dict[str, Any]] | None = None   # a conversation explained instead of a pair

    @property
    def text(self) -> str:
        """The scored response text, rebuilt from the tokens' bytes."""
        return b"".join(r.data for r in self.rows).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """The ``loglik explain --json`` object."""
        out: dict[str, Any] = {}
        if self.id is not None:
            out["id"] = self.id
        if self.messages is not None:
            out["messages"] = self.messages
        out.update(prompt=self.prompt, response=self.response, logprob=self.logprob,
                   num_tokens=len(self.rows), num_bytes=self.num_bytes,
                   boundary=self.boundary, tokens=[r.to_dict() for r in self.rows])
        return out


def from_score(score: Score, tokenizer: Any = None, *, prompt: str | None = None,
               response: str | None = None) -> Explanation:
    """Rows of a :class:`Score` (ranks, entropies, top-k are shown when it has them)."""
    byte_level = is_byte_level(tokenizer) if tokenizer is not None else None
    rows, total = [], 0.0
    for i, (tid, raw, lp) in enumerate(zip(score.token_ids, score.tokens,
                                          score.token_logprobs)):
        total += lp
        top = [Alternative(visible(token_bytes(t, byte_level=byte_level)), alt_lp)
               for t, alt_lp in (score.token_top[i] if score.token_top else [])]
        rows.append(TokenRow(
            position=i, token_id=tid, raw=raw, data=token_bytes(raw, byte_level=byte_level),
            logprob=lp, cumulative=total, greedy=score.token_greedy[i],
            rank=score.token_ranks[i] if score.token_ranks else None,
            entropy=score.token_entropies[i] if score.token_entropies else None, top=top))
    if rows:
        rows[-1].cumulative = score.logprob   # the fp64 fsum, exactly
    return Explanation(prompt, response, score.logprob, rows, score.boundary, score.num_bytes,
                       score.id)


def explain(scorer: Scorer, prompt: str | None = None, response: str | None = None, *,
            messages: Sequence[Mapping[str, Any]] | None = None,
            top_k: int = 5) -> Explanation:
    """Score one pair (or one conversation) and lay out every term of its decomposition.

    Args:
        scorer: a :class:`loglik.Scorer`.
        prompt, response: the pair; log Pr(response | prompt) is explained.
        messages: a conversation instead of a pair (OpenAI format): its scored assistant
            turn is explained (the last one; every one with ``turns="all"``), content and
            end-of-turn tokens, exactly what ``loglik score`` scores (:mod:`loglik.chat`).
        top_k: alternatives shown per position.

    Example:
        >>> e = scorer.explain("The capital of France is", " Paris")   # doctest: +SKIP
        >>> e.rows[-1].cumulative == e.logprob                         # doctest: +SKIP
        True
    """
    if messages is not None:
        if prompt is not None or response is not None:
            from .errors import ConfigError

            raise ConfigError("explain takes a prompt and a response, or messages; not both")
        from .data import messages_field

        conv = messages_field({"messages": messages}, "messages", source="<messages>")
        score = scorer.score_many([Example("", "", source="<messages>", messages=conv)],
                                  rank=True, entropy=True, top_k=top_k)[0]
        expl = from_score(score, scorer.tokenizer)
        expl.messages = [dict(m) for m in conv]
        return expl
    if prompt is None or response is None:
        from .errors import ConfigError

        raise ConfigError("explain needs a prompt and a response (or messages)")
    score = scorer.score(prompt, response, rank=True, entropy=True, top_k=top_k)
    return from_score(score, scorer.tokenizer, prompt=prompt, response=response)
