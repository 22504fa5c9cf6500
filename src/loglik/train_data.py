"""Training data: prompt/response records or plain text, as the scorer's Encoded records.

Two kinds of input, both read with the scorer's readers and encoded by its
:class:`~loglik.tokenize.Encoder` (so BOS and boundary rules are the scorer's):

* **prompt/response** (JSONL, CSV, Parquet with ``prompt``/``response`` fields, as for
  ``loglik score``): only response tokens are trained on.
* **plain text** (pre-training; every token a response token): a ``.txt`` file whose
  documents are separated by blank lines, or any record file with a text field
  (``text_field="text"``, ``--text-field text``) holding one document per record. A document
  is the pair ``("", document)``: it is conditioned on BOS (EOS where the tokenizer has no
  BOS), exactly as ``loglik score`` scores a record with an empty prompt. A document longer
  than ``block_size`` tokens is cut into blocks of ``block_size`` response tokens, each
  conditioned on that start token again.

Batches come from the scorer's planner (:func:`loglik.plan.plan_batches`): examples of
similar length together, at most ``batch_tokens`` padded tokens per batch. The order of the
batches is shuffled per epoch from the seed, so a resumed run sees the same order.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from .data import Fields, expand_inputs, read_documents, read_examples
from .errors import InputError
from .plan import plan_batches
from .tokenize import Encoder
from .types import Encoded, Example

# Examples tokenized together (two batched tokenizer calls per window).
WINDOW = 1024


def is_text_input(path: str, text_field: str | None) -> bool:
    """Plain text when a text field is named or the file ends in ``.txt``."""
    if text_field is not None or Path(path).suffix.lower() == ".txt":
        return True
    shards = expand_inputs(path)                     # a folder of .txt files
    return all(s.lower().endswith(".txt") for s in shards)


def load_examples(path: str, encoder: Encoder, *, text_field: str | None = None,
                  fields: Fields = Fields(), fmt: str | None = None,
                  block_size: int | None = None) -> list[Encoded]:
    """Read and encode a whole training or evaluation file."""
    if is_text_input(path, text_field):
        return load_text(path, encoder, text_field=text_field, fmt=fmt, block_size=block_size)
    return _encode_all(read_examples(path, fields, fmt), encoder)


def _encode_all(examples: Iterator[Example], encoder: Encoder) -> list[Encoded]:
    out: list[Encoded] = []
    window: list[Example] = []
    for ex in examples:
        window.append(ex)
        if len(window) == WINDOW:
            out += encoder.encode_many(window)
            window = []
    if window:
        out += encoder.encode_many(window)
    return out


def iter_documents(path: str, *, text_field: str | None = None, fmt: str | None = None
                   ) -> Iterator[Example]:
    """Non-empty documents of a text input (file, folder or glob) as ``Example("", text)``."""
    return (d for d in read_documents(path, text_field=text_field, fmt=fmt) if d.response)


def load_text(path: str, encoder: Encoder, *, text_field: str | None = None,
              fmt: str | None = None, block_size: int | None = None) -> list[Encoded]:
    """Encode plain-text documents; cut those longer than ``block_size`` into blocks."""
    limit = block_size or _default_block(encoder.max_length)
    # Documents are encoded without the context limit, then cut to fit it.
    unlimited = Encoder(encoder.tok, encoder.options, max_length=None)
    out: list[Encoded] = []
    for enc in _encode_all(iter_documents(path, text_field=text_field, fmt=fmt), unlimited):
        ids = enc.response_ids
        if len(ids) <= limit:
            out.append(enc)
            continue
        for s in range(0, len(ids), limit):
            out.append(Encoded(enc.context_ids, ids[s:s + limit], "", enc.boundary,
                               eos_scored=enc.eos_scored and s + limit >= len(ids)))
    if not out:
        raise InputError("no text to train on (the file has no non-empty document)", source=path)
    return out


def _default_block(max_length: int | None) -> int:
    """Response tokens per block: the model reads the start token plus the block."""
    return min(max_length - 1, 1024) if max_length else 1024


def row_length(enc: Encoded) -> int:
    """Tokens a training row reads: the context and every response token."""
    return len(enc.context_ids) + len(enc.response_ids) if enc.response_ids else 0


# Version of the epoch order: checkpoints record it, so a run resumes in its own order.
PLAN_VERSION = 2


def plan_epoch(encoded: Sequence[Encoded], batch_tokens: int, *, seed: int, epoch: int,
               version: int = PLAN_VERSION) -> list[tuple[int, ...]]:
    """Token-budget batches (indices into ``encoded``) in this epoch's shuffled order.

    The examples are permuted before planning, so examples of equal length meet different
    batch neighbours from epoch to epoch; then the batches' order is shuffled. ``version=1``
    (checkpoints written before that change) plans the examples in input order.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    perm = list(range(len(encoded)))
    if version >= 2:
        rng.shuffle(perm)
    plan = plan_batches([row_length(encoded[i]) for i in perm], batch_tokens)
    batches = [tuple(perm[j] for j in b.indices) for b in plan.batches]
    rng.shuffle(batches)
    return batches


def steps_of(batches: Sequence[tuple[int, ...]], grad_accum: int) -> list[list[tuple[int, ...]]]:
    """Group batches into optimiser steps of ``grad_accum`` micro-batches (last may be short)."""
    return [list(batches[i:i + grad_accum]) for i in range(0, len(batches), grad_accum)]
