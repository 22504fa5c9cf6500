"""Normalisations of log Pr(y|x): per token, byte, character, perplexity, bits, and per word.

Every figure is derived from ``Score.logprob`` (a sum in nats) and the counts every score
carries. Corpus figures pool the sums first: corpus perplexity is
``exp(-Σ logprob / Σ num_tokens)``, never a mean of per-text perplexities (which would weight
a 3-token text like a 3,000-token one).

Per-word log-probs follow Pimentel & Meister (2024), "How to Compute the Probability of a
Word". With a tokenizer that marks the *beginning* of a word (GPT-2's ``Ġ``, SentencePiece's
``▁``), the tokens of a word do not say that the word has ended: the next token could
continue it. The probability of the word ``w`` after a context ``c`` is::

    p(w | c) = p(tokens(w) | c) · B(c ∘ w) / B(c)

where ``B(x) = Σ_{t word-initial or EOS} p(t | x)`` is the probability that a new word (or the
end of the text) comes next. The set of word-initial tokens is derived from the tokenizer's
own space marker (:func:`space_marker`), not hard-coded. Summed over the words of a response
the correction telescopes: ``Σ corrected = logprob + log B(end) − log B(start)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .tokenize import as_text_tokenizer
from .types import Score

if TYPE_CHECKING:
    from .scorer import Scorer


LN2 = math.log(2)


# -- normalisations of one score or of totals ------------------------------------------------
def per_unit(logprob: float, count: int) -> float:
    """``logprob / count``; nan when there is nothing to divide by."""
    return logprob / count if count else math.nan


def perplexity(total_logprob: float, num_tokens: int) -> float:
    """``exp(-Σ logprob / Σ tokens)``: pass corpus totals, not a mean of perplexities.

    >>> round(perplexity(-2 * math.log(4), 2), 6)
    4.0
    """
    return math.exp(-total_logprob / num_tokens) if num_tokens else math.nan


def bits_per_byte(total_logprob: float, num_bytes: int) -> float:
    """Negative log2-probability per UTF-8 byte of the scored text (lower is better).

    >>> bits_per_byte(-8 * math.log(2), 4)
    2.0
    """
    return -total_logprob / LN2 / num_bytes if num_bytes else math.nan


@dataclass(frozen=True)
class CorpusStats:
    """Totals over a set of scores and the normalisations derived from them: the one type
    for corpus totals (compare, ``score --text-field``, the trainer's evaluations).

    Every figure names its unit: ``logprob_per_example`` divides the total by the number of
    examples, ``logprob_per_token`` / ``_per_byte`` / ``_per_char`` by the total count (a
    token-weighted mean); ``perplexity`` (per token) and ``bits_per_byte`` follow from them.
    """

    total_logprob: float
    num_examples: int
    num_tokens: int
    num_bytes: int
    num_chars: int

    @property
    def logprob_per_example(self) -> float:
        return per_unit(self.total_logprob, self.num_examples)

    @property
    def logprob_mean(self) -> float:
        """Old name of :attr:`logprob_per_example` (per example, not per token)."""
        return self.logprob_per_example

    @property
    def logprob_per_token(self) -> float:
        return per_unit(self.total_logprob, self.num_tokens)

    @property
    def logprob_per_byte(self) -> float:
        return per_unit(self.total_logprob, self.num_bytes)

    @property
    def logprob_per_char(self) -> float:
        return per_unit(self.total_logprob, self.num_chars)

    @property
    def perplexity(self) -> float:
        return perplexity(self.total_logprob, self.num_tokens)

    @property
    def bits_per_byte(self) -> float:
        return bits_per_byte(self.total_logprob, self.num_bytes)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("logprob_per_example", "logprob_per_token", "logprob_per_byte",
                     "logprob_per_char", "perplexity", "bits_per_byte"):
            out[name] = getattr(self, name)
        return out


class CorpusTotals:
    """Running corpus totals in constant memory: add scores (or output records), then
    :meth:`stats`. Log-probs are summed with ``math.fsum`` in blocks of 4,096."""

    def __init__(self) -> None:
        self._logprobs: list[float] = []
        self.num_examples = self.num_tokens = self.num_bytes = self.num_chars = 0

    def add(self, score: Score | Mapping[str, Any]) -> None:
        get = score.get if isinstance(score, Mapping) else lambda k: getattr(score, k)
        self._logprobs.append(get("logprob"))
        if len(self._logprobs) >= 4096:
            self._logprobs = [math.fsum(self._logprobs)]
        self.num_examples += 1
        self.num_tokens += get("num_tokens")
        self.num_bytes += get("num_bytes")
        self.num_chars += get("num_chars")

    def stats(self) -> CorpusStats:
        return CorpusStats(math.fsum(self._logprobs), self.num_examples, self.num_tokens,
                           self.num_bytes, self.num_chars)


def corpus_stats(scores: Iterable[Score | Mapping[str, Any]]) -> CorpusStats:
    """Pool scores (or output records): fp64 sum of log-probs and summed counts."""
    totals = CorpusTotals()
    for s in scores:
        totals.add(s)
    return totals.stats()


# -- per-word log-probs ------------------------------------------------------------------------
_PROBES = ("a b", "the cat", "x y", "1 2", "hello world")


def space_marker(tokenizer: Any) -> str:
    """The prefix a tokenizer puts on a word-initial token: ``"Ġ"``, ``"▁"``, ``" "``...

    Found by tokenizing a probe such as ``"a b"`` and taking what the token of ``b`` carries
    before the letter; a tokenizer with standalone space tokens gives that token's string.

    Raises:
        ConfigError: the tokenizer marks no word beginnings (e.g. it marks word ends).
    """
    tok = as_text_tokenizer(tokenizer)
    for probe in _PROBES:
        last = probe.split(" ")[-1]
        try:
            ids = tok.encode_batch([probe])[0]
        except Exception:   # a toy tokenizer that does not know the probe's words
            continue
        pieces = tok.convert_ids_to_tokens(ids)
        if len(pieces) < 2:
            continue
        if pieces[-1].endswith(last) and len(pieces[-1]) > len(last):
            return pieces[-1][:-len(last)]
        if pieces[-1] == last and tok.decode(ids[-2:-1]).isspace():
            return pieces[-2]
    raise ConfigError("cannot find the tokenizer's word-beginning marker: tokenizing 'a b' "
                      "does not put a space marker on 'b'; per-word correction needs a "
                      "tokenizer that marks word beginnings (GPT-2 'Ġ', SentencePiece '▁')")


def word_initial_ids(tokenizer: Any, vocab_size: int | None = None) -> list[bool]:
    """For each token id: does it start a new word? (EOS counts: it ends the last word.)

    A token starts a word when its string begins with :func:`space_marker` or it decodes to
    text that begins with whitespace (newline and tab tokens, byte-fallback spaces).
    """
    tok = as_text_tokenizer(tokenizer)
    marker = space_marker(tok)
    n = len(tok)
    ids = list(range(n))
    pieces = tok.convert_ids_to_tokens(ids)
    hf = getattr(tok, "hf", None)
    texts = (hf.batch_decode([[i] for i in ids], skip_special_tokens=False,
                             clean_up_tokenization_spaces=False)
             if hf is not None else [tok.decode([i]) for i in ids])
    mask = [bool(p) and (p.startswith(marker) or t[:1].isspace())
            for p, t in zip(pieces, texts)]
    size = vocab_size if vocab_size is not None else n
    mask = (mask + [False] * size)[:size]
    if tok.eos_token_id is not None and tok.eos_token_id < size:
        mask[tok.eos_token_id] = True
    bos = tok.bos_token_id
    if bos is not None and bos != tok.eos_token_id and bos < size:
        mask[bos] = False
    return mask


@dataclass(frozen=True)
class Word:
    """One word of a response and its log-probability (nats).

    ``logprob`` is corrected (Pimentel & Meister 2024); ``logprob_uncorrected`` is the plain
    sum of its tokens' log-probs. ``token_start``/``token_end`` index the response tokens
    (end exclusive). ``bow_logprob_before``/``after`` are ``log B`` at the word's edges.
    """

    text: str
    token_start: int
    token_end: int
    logprob: float
    logprob_uncorrected: float
    bow_logprob_before: float
    bow_logprob_after: float


def word_logprobs(scorer: Scorer, examples: Iterable[Any]) -> list[list[Word]]:
    """Per-word log-probs of each example's response, corrected and uncorrected.

    Words start at the first response token and at every word-initial token. A scored EOS
    belongs to no word (it is part of the last word's ``B``). A response whose first token is
    not word-initial (it continues the prompt's last word) gets no ``B(start)`` division.

    Args:
        scorer: a :class:`loglik.Scorer` whose backend exposes full distributions (HF, fake).
        examples: pairs, dicts or Examples, as for ``Scorer.score_many``.

    Returns:
        For each example, its words in order.

    Example:
        >>> words = word_logprobs(scorer, [("The cat", " sat on the mat")])   # doctest: +SKIP
        >>> [(w.text, round(w.logprob, 2)) for w in words[0]]                  # doctest: +SKIP
    """
    import torch

    from .data import to_examples
    from .distributions import position_stats
    from .types import Request

    exs = list(to_examples(examples))
    encoded = scorer.encoder.encode_many(exs)
    backend = scorer.backend
    bow = torch.tensor(word_initial_ids(scorer.tokenizer, int(backend.vocab_size)))  # (V,)

    def reduce(logps: list[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        lp = logps[0]                                                    # (C, V)
        tgt = lp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)            # (C,)
        mass = torch.logsumexp(lp[:, bow.to(lp.device)], dim=-1)          # (C,)
        return torch.stack([tgt, mass], dim=-1)                          # (C, 2)

    stats = position_stats([backend], [Request(e.context_ids, e.response_ids) for e in encoded],
                           reduce, batch_tokens=scorer.batch_tokens, final=True)
    bow_list = bow.tolist()
    out = []
    for enc, st in zip(encoded, stats):
        ids = list(enc.response_ids)
        n = len(ids) - (1 if enc.eos_scored else 0)
        token_lp = st[:, 0].tolist()
        log_b = st[:, 1].tolist()          # log_b[i]: before response token i; [len(ids)]: end
        starts = [i for i in range(n) if i == 0 or bow_list[ids[i]]]
        ends = starts[1:] + [n]
        prefix_text = scorer.tokenizer.decode(list(enc.context_ids))
        texts = {k: scorer.tokenizer.decode(list(enc.context_ids) + ids[:k])
                 for k in set(starts) | set(ends)}
        words = []
        for a, b in zip(starts, ends):
            raw = math.fsum(token_lp[a:b])
            before = log_b[a] if (a > 0 or bow_list[ids[0]]) else 0.0
            after = log_b[b]
            start_text = texts[a] if a else prefix_text
            words.append(Word(texts[b][len(start_text):], a, b, raw + after - before, raw,
                              before, after))
        out.append(words)
    return out


def word_records(words: Iterable[Word], *, bits: bool = False) -> list[dict[str, Any]]:
    """The ``words`` field of an output record: text, corrected and plain sums, token count.

    In nats (``logprob``, ``logprob_uncorrected``), or in bits with ``bits`` (the same names
    with ``_bits``: ``logprob_bits``, ``logprob_uncorrected_bits``).
    """
    unit, suffix = (1 / LN2, "_bits") if bits else (1.0, "")
    return [{"text": w.text, f"logprob{suffix}": w.logprob * unit,
             f"logprob_uncorrected{suffix}": w.logprob_uncorrected * unit,
             "num_tokens": w.token_end - w.token_start} for w in words]


def iter_scores_with_words(scorer: Any, examples: Iterable[Any], *, bits: bool = False,
                           **options: Any) -> Iterable[Any]:
    """``scorer.iter_scores`` with ``extra["words"]`` (:func:`word_records`) on every score.

    The words need full next-token distributions, so each window of examples is run a
    second time through :func:`word_logprobs`; a failed record (``on_error="record"``) gets
    no words. ``options`` go to ``iter_scores``.
    """
    from itertools import islice

    from .data import Fields, to_examples

    stream = to_examples(examples, options.pop("fields", Fields()))
    while True:
        chunk = list(islice(stream, scorer.window))
        scores = list(scorer.iter_scores(chunk, **options))
        ok = [i for i, s in enumerate(scores) if isinstance(s, Score)]
        for i, words in zip(ok, word_logprobs(scorer, [chunk[i] for i in ok])):
            scores[i].extra["words"] = word_records(words, bits=bits)
        yield from scores
        if len(chunk) < scorer.window:
            return
