"""The records that flow through the pipeline (see shared/DESIGN.md, "Data flow").

Example -> Encoded -> Request -> TokenResult -> Score. Plain dataclasses: no tensors, no
tokenizers, so every stage can be tested (and pickled to a Ray worker) on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Boundary = Literal["joint", "split", "ids", "chat", "chat_split", "seq2seq"]


@dataclass(frozen=True)
class Example:
    """One prompt/response pair, with where it came from (for error messages)."""

    prompt: str
    response: str
    id: Any = None
    source: str | None = None   # file name, "<stdin>" or "<python>"
    line: int | None = None     # 1-based line/row in ``source``
    extra: dict[str, Any] | None = None  # other fields of the input record, carried through
    prompt_ids: tuple[int, ...] | None = None    # token ids given instead of text
    response_ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, str], ...] | None = None   # a conversation (OpenAI format)


@dataclass(frozen=True)
class Encoded:
    """An example as token ids, with the boundary decision made.

    ``context_ids`` is everything the response is conditioned on (BOS included when the
    policy adds it); ``response_ids`` are the scored tokens (EOS last when ``score_eos``).
    ``response_text`` is the scored text, the text the response tokens stand for: the
    response with the prompt's trailing whitespace moved to its front (``whitespace="move"``,
    never onto an empty response); ``Score.num_bytes``/``num_chars`` count it.
    """

    context_ids: tuple[int, ...]
    response_ids: tuple[int, ...]
    response_text: str
    boundary: Boundary
    truncated_tokens: int = 0
    eos_scored: bool = False
    # a conversation scored on every assistant turn: one Encoded per turn (the fields above
    # are the last turn's) and the turns' message indices
    parts: tuple[Encoded, ...] | None = None
    turn_indices: tuple[int, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.response_ids)


@dataclass(frozen=True)
class Detail:
    """What a backend computes per response token beyond its log-prob.

    ``greedy`` (no token has a strictly larger logit, i.e. rank 1) is always computed from
    the row maxima that the log-softmax needs anyway.
    ``rank`` is 1 + the number of vocabulary entries with a strictly larger logit (no sort).
    ``entropy`` is the entropy of the next-token distribution in nats. ``top_k`` > 0 returns
    the k most probable alternatives as (token id, log-prob) pairs.
    """

    rank: bool = False
    entropy: bool = False
    top_k: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")


@dataclass(frozen=True)
class Request:
    """What a backend sees: token ids only. Score ``target_ids`` given ``context_ids``."""

    context_ids: tuple[int, ...]
    target_ids: tuple[int, ...]


@dataclass
class TokenResult:
    """A backend's answer for one request: per target token, in order."""

    logprobs: list[float]
    greedy: list[bool]
    ranks: list[int] | None = None
    entropies: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None

    @classmethod
    def empty(cls, detail: Detail) -> TokenResult:
        """The result for a request with no target tokens."""
        return cls([], [], [] if detail.rank else None, [] if detail.entropy else None,
                   [] if detail.top_k else None)


@dataclass
class Score:
    """log Pr(response | prompt) and its per-token decomposition (natural log, nats).

    ``logprob`` is the fp64 sum of ``token_logprobs``. ``greedy`` is True when every
    response token is the model's argmax. An empty response scores 0.0 with 0 tokens.

    ``num_bytes`` (UTF-8 bytes) and ``num_chars`` (code points) count the *scored* text:
    the response after the prompt's trailing whitespace moved to its front (the default
    ``whitespace="move"``), i.e. the text the scored tokens stand for. So
    ``score("The capital of France is ", "Paris")`` scores ``" Paris"`` and reports
    ``num_bytes == 6``; with ``whitespace="keep"`` it is the response as given (5).
    ``"".join(token_texts)`` spells the scored text out.
    """

    logprob: float
    token_ids: list[int]
    tokens: list[str]
    token_logprobs: list[float]
    token_greedy: list[bool]
    num_tokens: int
    num_bytes: int
    num_chars: int
    boundary: Boundary
    id: Any = None
    truncated_tokens: int = 0
    token_ranks: list[int] | None = None
    token_entropies: list[float] | None = None
    token_top: list[list[tuple[str, float]]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: each token's piece of the scored text (they concatenate to it; see
    #: :func:`loglik.tokenize.token_texts`): readable where ``tokens`` are vocabulary strings
    token_texts: list[str] = field(default_factory=list)

    @property
    def greedy(self) -> bool:
        return all(self.token_greedy)

    @property
    def nll(self) -> float:
        return -self.logprob

    @property
    def logprob_per_token(self) -> float:
        """Mean log-prob per response token (nan for an empty response)."""
        return self.logprob / self.num_tokens if self.num_tokens else math.nan

    @property
    def logprob_per_byte(self) -> float:
        return self.logprob / self.num_bytes if self.num_bytes else math.nan

    def to_record(self) -> dict[str, Any]:
        """The JSON-able output record (the ``loglik score`` JSONL line)."""
        rec: dict[str, Any] = {}
        if self.id is not None:
            rec["id"] = self.id
        rec.update(
            logprob=self.logprob,
            num_tokens=self.num_tokens,
            num_bytes=self.num_bytes,
            num_chars=self.num_chars,
            greedy=self.greedy,
            boundary=self.boundary,
            token_ids=self.token_ids,
            tokens=self.tokens,
            token_texts=self.token_texts,
            token_logprobs=self.token_logprobs,
        )
        if self.truncated_tokens:
            rec["truncated_tokens"] = self.truncated_tokens
        if self.token_ranks is not None:
            rec["token_ranks"] = self.token_ranks
        if self.token_entropies is not None:
            rec["token_entropies"] = self.token_entropies
        if self.token_top is not None:
            rec["token_top"] = [[[t, lp] for t, lp in alts] for alts in self.token_top]
        rec.update(self.extra)
        return rec


@dataclass(frozen=True)
class FailedRecord:
    """A record that could not be scored, kept in its place (``on_error="record"``).

    ``error`` is the message of the error that stopped it (it names the file and line).
    """

    id: Any
    error: str

    def to_record(self) -> dict[str, Any]:
        """The output line: ``{"id": ..., "error": ...}``."""
        return {"id": self.id, "error": self.error}
