"""A backend and tokenizer with known conditional distributions, shipped for tests and docs.

The fake language model is a table: for a context (tuple of token ids) it gives the
probability of each next token; contexts not in the table get ``default`` (uniform when
None). With it the chain rule can be checked by hand::

    >>> from loglik.backends.fake import FakeBackend, WordTokenizer
    >>> from loglik import Scorer
    >>> tok = WordTokenizer(["the", "cat", "sat"])
    >>> the, cat, sat = tok.ids("the cat sat")
    >>> import math
    >>> lm = FakeBackend(vocab_size=len(tok), table={
    ...     (tok.bos_token_id, the): {cat: math.exp(-0.7)},
    ...     (tok.bos_token_id, the, cat): {sat: math.exp(-0.4)}})
    >>> round(Scorer(lm, tok).score("the", " cat sat").logprob, 6)
    -1.1
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..types import Detail, Request, TokenResult
from .base import DISTRIBUTIONS


class FakeBackend:
    """A language model given by a table ``context -> {next_token: probability}``.

    Tokens not listed in a context's row share the remaining probability mass equally.
    It implements the :class:`~loglik.backends.base.Backend` protocol and the optional
    ``distributions`` capability (:class:`~loglik.backends.base.DistributionSource`).
    """

    capabilities = frozenset({DISTRIBUTIONS})

    def __init__(self, vocab_size: int, table: Mapping[tuple[int, ...], Mapping[int, float]]
                 | None = None, *, max_length: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.table = {tuple(k): dict(v) for k, v in (table or {}).items()}
        self.calls: list[list[Request]] = []   # what each score() call received, for tests

    def distribution(self, context: Sequence[int]) -> list[float]:
        """The full next-token distribution after ``context`` (sums to 1)."""
        row = self.table.get(tuple(context), {})
        listed = sum(row.values())
        if listed > 1 + 1e-9:
            raise ValueError(f"probabilities after {tuple(context)} sum to {listed} > 1")
        rest = self.vocab_size - len(row)
        fill = (1.0 - listed) / rest if rest else 0.0
        return [row.get(t, fill) for t in range(self.vocab_size)]

    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        self.calls.append(list(requests))
        results = []
        for req in requests:
            seq = list(req.context_ids)
            res = TokenResult([], [], [] if detail.rank else None,
                              [] if detail.entropy else None, [] if detail.top_k else None)
            for t in req.target_ids:
                p = self.distribution(seq)
                lp = math.log(p[t]) if p[t] > 0 else -math.inf
                res.logprobs.append(lp)
                res.greedy.append(max(range(len(p)), key=p.__getitem__) == t)
                if res.ranks is not None:
                    res.ranks.append(1 + sum(q > p[t] for q in p))
                if res.entropies is not None:
                    res.entropies.append(-sum(q * math.log(q) for q in p if q > 0))
                if res.top is not None:
                    order = sorted(range(len(p)), key=lambda i: -p[i])[:detail.top_k]
                    res.top.append([(i, math.log(p[i]) if p[i] > 0 else -math.inf)
                                    for i in order])
                seq.append(t)
            results.append(res)
        return results


    def prepare(self, requests: Sequence[Request]) -> list[tuple[int, ...]]:
        """The context before every target, request after request."""
        contexts = []
        for r in requests:
            seq = list(r.context_ids)
            for t in r.target_ids:
                contexts.append(tuple(seq))
                seq.append(t)
        return contexts

    def log_distributions(self, rows: Sequence[tuple[int, ...]]) -> Any:
        """(C, V) log-probabilities of the table after each context (exact, float64)."""
        import torch

        p = torch.tensor([self.distribution(c) for c in rows], dtype=torch.float64)
        return p.log()                                                   # (C, V)


class WordTokenizer:
    """A whitespace-aware word tokenizer: ``"the cat"`` -> ``["the", " cat"]``.

    Token 0 is ``<s>`` (BOS, added automatically), 1 is ``</s>`` (EOS); each word appears
    bare and with a leading space, so decoding is exact for the words it knows.
    """

    def __init__(self, words: Sequence[str], *, adds_bos: bool = True) -> None:
        self.vocab = ["<s>", "</s>"]
        for w in words:
            self.vocab += [w, " " + w]
        self.index = {t: i for i, t in enumerate(self.vocab)}
        self.bos_token_id, self.eos_token_id = 0, 1
        self.adds_bos = adds_bos

    def ids(self, text: str) -> list[int]:
        """Token ids of ``text`` (words separated by single spaces)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        out = []
        for text in texts:
            pieces = re.findall(r" ?[^ ]+| ", text)
            try:
                out.append([self.index[p] for p in pieces])
            except KeyError as exc:
                raise ValueError(f"unknown word {exc.args[0]!r}") from None
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.vocab[i] for i in ids]

    def __len__(self) -> int:
        return len(self.vocab)
