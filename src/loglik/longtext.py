"""Unconditional log-likelihood of texts longer than the model's context, by strided windows.

A document's tokens ``t_1..t_n`` follow a start token ``s_0`` (BOS, or EOS where the tokenizer
has no BOS: the token an empty prompt conditions on, see :mod:`loglik.tokenize`), so a text
that fits is scored exactly as ``scorer.score("", text)``. A longer one is cut into windows
of at most ``L`` tokens read (``L`` = the model's context, or ``max_length``)::

    window 1   reads s_0 .. t_{L-1}                        scores t_1 .. t_L
    window k   reads t_{p-C+1} .. t_{p+S-1}                scores t_{p+1} .. t_{p+S}
               (C = L - S + 1 tokens of context, the first replaced by BOS when the
                BOS policy adds BOS, so every window starts the way the model was trained)

``S`` is the stride: each window after the first scores the next ``S`` tokens, with
``L - S + 1`` tokens of left context (``L - S`` plus BOS when BOS is added). Every token is
scored exactly once, BOS never, and ``sum(num_tokens) == len(tokenize(text))``. A smaller
stride costs more forward passes and gives more context: ``S = L`` is plain chunking
(cheapest), ``S = 1`` a full sliding window. The naive equivalent, used in the tests, is one
float64 full forward per window.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from .data import read_documents  # noqa: F401  (its home is data.py; kept importable here)
from .errors import ConfigError, InputError
from .types import Detail, Encoded, Example, Request, Score, TokenResult

if TYPE_CHECKING:
    from .metrics import CorpusStats
    from .scorer import Scorer

#: why an encoder-decoder model does not score a lone text (``--text-field``, ``score_text``)
TEXT_SEQ2SEQ = (
    "an encoder-decoder model (T5, BART) gives the probability of a target given a source, "
    "so a lone text has no log-probability of its own under it (and windows of decoder "
    "context, as --text-field uses for long texts, are not what such a model reads). Score "
    "prompt/response records instead: the source as the prompt, the text as the response; "
    'for the text given an empty source, write {"prompt": "", "response": TEXT}')

#: documents tokenized and planned together (the resume unit of ``loglik score --text-field``)
DOCS_PER_CHUNK = 64


def window_requests(ids: Sequence[int], *, start: int, bos: int | None, max_length: int | None,
                    stride: int | None = None) -> list[Request]:
    """The windows that score ``ids`` after ``start``, as backend requests (see module doc).

    Args:
        ids: the document's tokens, (n,).
        start: the token the first window conditions on (BOS or EOS).
        bos: BOS to put first in every later window's context, or None (no BOS policy).
        max_length: tokens one window may read (None: one window, however long).
        stride: tokens scored per window after the first (default ``max_length // 2``).

    >>> [(r.context_ids, r.target_ids) for r in window_requests(
    ...     [1, 2, 3, 4, 5, 6], start=0, bos=None, max_length=4, stride=2)]
    [((0,), (1, 2, 3, 4)), ((2, 3, 4), (5, 6))]
    """
    ids = list(ids)
    if not ids:
        return []
    if max_length is None or len(ids) <= max_length:
        return [Request((start,), tuple(ids))]
    if max_length < 2:
        raise ConfigError(f"windows need max_length >= 2, got {max_length}")
    stride = max_length // 2 if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ConfigError(f"stride must be between 1 and the window of {max_length} tokens, "
                          f"got {stride}")
    seq = [start, *ids]                     # seq[i] is t_i; seq[0] the start token
    requests = [Request((start,), tuple(ids[:max_length]))]
    end = max_length                        # t_1..t_end are scored
    context = max_length - stride + 1
    while end < len(ids):
        stop = min(end + stride, len(ids))
        left = seq[end + 1 - context:end + 1]
        if bos is not None:
            left = [bos, *left[1:]]
        requests.append(Request(tuple(left), tuple(seq[end + 1:stop + 1])))
        end = stop
    return requests


def _concat(results: Sequence[TokenResult], detail: Detail) -> TokenResult:
    out = TokenResult.empty(detail)
    for r in results:
        out.logprobs += r.logprobs
        out.greedy += r.greedy
        for name in ("ranks", "entropies", "top"):
            if getattr(out, name) is not None:
                getattr(out, name).extend(getattr(r, name))
    return out


def iter_text_scores(scorer: Scorer, documents: Iterable[Any], *, stride: int | None = None,
                     max_length: int | None = None, rank: bool = False, entropy: bool = False,
                     top_k: int = 0, docs_per_chunk: int = DOCS_PER_CHUNK) -> Iterator[Score]:
    """Stream one :class:`Score` per document (a string or an :class:`Example` whose
    ``response`` is the text), in order. ``Score.extra["num_windows"]`` counts the windows."""
    if getattr(scorer.backend, "is_encoder_decoder", False):
        raise ConfigError(TEXT_SEQ2SEQ)
    detail = Detail(rank=rank, entropy=entropy, top_k=top_k)
    limit = scorer.backend.max_length
    if max_length is not None:
        if limit is not None and max_length > limit:
            raise ConfigError(f"max_length {max_length} is longer than the model's context "
                              f"{limit}; pass at most {limit}")
        limit = max_length
    encoder = scorer.encoder
    start = encoder.start_token()
    bos = encoder.tok.bos_token_id if encoder.add_bos else None
    stream = (d if isinstance(d, Example) else Example("", d, source="<python>", line=n)
              for n, d in enumerate(documents, start=1))
    while True:
        chunk = list(islice(stream, docs_per_chunk))
        if not chunk:
            return
        token_ids = encoder.tok.encode_batch([d.response for d in chunk])
        plans = []
        for doc, ids in zip(chunk, token_ids):
            if not isinstance(doc.response, str):
                raise InputError(f"a document must be a string, got {type(doc.response).__name__}",
                                 source=doc.source, line=doc.line)
            ids = list(ids) + ([encoder.tok.eos_token_id] if encoder.options.score_eos else [])
            plans.append((ids, window_requests(ids, start=start, bos=bos, max_length=limit,
                                               stride=stride)))
        results = scorer.run_requests([r for _, reqs in plans for r in reqs], detail)
        at = 0
        for doc, (ids, reqs) in zip(chunk, plans):
            merged = _concat(results[at:at + len(reqs)], detail)
            at += len(reqs)
            enc = Encoded((start,), tuple(ids), doc.response, "joint",
                          eos_scored=encoder.options.score_eos)
            score = scorer.to_score(enc, merged, doc.id)
            score.extra["num_windows"] = len(reqs)
            yield score
        if len(chunk) < docs_per_chunk:
            return


def score_text(scorer: Scorer, text: str, *, stride: int | None = None,
               max_length: int | None = None, rank: bool = False, entropy: bool = False,
               top_k: int = 0) -> Score:
    """log Pr(text) of one document of any length (see the module doc for the windows)."""
    return next(iter_text_scores(scorer, [text], stride=stride, max_length=max_length,
                                 rank=rank, entropy=entropy, top_k=top_k))


def corpus_perplexity(scorer: Scorer, documents: Iterable[Any], *, stride: int | None = None,
                      max_length: int | None = None) -> CorpusStats:
    """Pooled log-likelihood of a corpus: ``.perplexity`` (per token), ``.bits_per_byte``.

    Example:
        >>> stats = corpus_perplexity(scorer, read_documents("wiki.jsonl"))  # doctest: +SKIP
        >>> stats.perplexity, stats.bits_per_byte                            # doctest: +SKIP
    """
    from .metrics import corpus_stats

    return corpus_stats(iter_text_scores(scorer, documents, stride=stride,
                                         max_length=max_length))
