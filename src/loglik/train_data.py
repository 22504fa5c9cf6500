"""Training data: prompt/response records or plain text, as the scorer's Encoded records.

Two kinds of input, both read with the scorer's readers and encoded by its
:class:`~loglik.tokenize.Encoder` (so BOS and boundary rules are the scorer's):

* **prompt/response** (JSONL, CSV, Parquet with ``prompt``/``response`` fields, as for
  ``loglik score``): only response tokens are trained on.
* **conversations** (records with ``messages``, as for ``loglik score``): only assistant
  turns are trained on, each turn a row of its own with the chat template's rendering of
  the conversation before it as context; the loss mask covers exactly the span ``loglik
  score`` scores (content and end-of-turn tokens, unless ``end_of_turn=False``), so the
  loss is minus the log-prob ``loglik score --turns all`` gives (:mod:`loglik.chat`).
* **plain text** (pre-training; every token a response token): a ``.txt`` file whose
  documents are separated by blank lines, or any record file with a text field
  (``text_field="text"``, ``--text-field text``) holding one document per record. A document
  is the pair ``("", document)``: it is conditioned on BOS (EOS where the tokenizer has no
  BOS), exactly as ``loglik score`` scores a record with an empty prompt. A document longer
  than ``block_size`` tokens is cut into blocks of ``block_size`` response tokens, each
  conditioned on that start token again.

Micro-batches hold at most ``batch_tokens`` tokens and ``batch_size`` examples (default:
:func:`auto_batch_size`, so small data still give an epoch of many optimiser steps). Packed
(:mod:`loglik.train_packing`), they take the epoch's permuted examples as they come; padded,
the scorer's planner (:func:`loglik.plan.plan_batches`) groups examples of similar length.
The order is shuffled per epoch from the seed, so a resumed run sees the same order.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

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
    """Encode in windows; a conversation scored turn by turn gives one record per turn."""
    out: list[Encoded] = []
    window: list[Example] = []
    for ex in examples:
        window.append(ex)
        if len(window) == WINDOW:
            out += _turns(encoder.encode_many(window))
            window = []
    if window:
        out += _turns(encoder.encode_many(window))
    return out


def _turns(encoded: list[Encoded]) -> list[Encoded]:
    return [p for e in encoded for p in (e.parts or (e,))]


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
# 1: input order; 2: examples permuted; 3: at most ``batch_size`` examples per micro-batch,
# and packed micro-batches take the permuted examples as they come.
PLAN_VERSION = 3

# The default micro-batch: at most this many examples ...
MIN_AUTO_BATCH = 8
# ... unless the data are large enough for an epoch of about this many optimiser steps.
AUTO_STEPS = 100


def auto_batch_size(num_examples: int, *, grad_accum: int = 1, processes: int = 1) -> int:
    """Examples per micro-batch when the user names none: ``max(8, ceil(N / (100 x
    grad_accum x processes)))``, so an epoch has about 100 optimiser steps, or as many as
    the data allow with 8 examples per micro-batch (the token budget applies as well).

    >>> auto_batch_size(192), auto_batch_size(100_000), auto_batch_size(100_000, processes=4)
    (8, 1000, 250)
    """
    return max(MIN_AUTO_BATCH, math.ceil(num_examples / (AUTO_STEPS * grad_accum * processes)))


def plan_epoch(encoded: Sequence[Encoded], batch_tokens: int, *, seed: int, epoch: int,
               version: int = PLAN_VERSION, batch_size: int | None = None,
               pack: bool = False) -> list[tuple[int, ...]]:
    """Micro-batches (indices into ``encoded``) in this epoch's shuffled order.

    The examples are permuted from ``seed`` and ``epoch``. Padded (``pack=False``): the
    scorer's planner groups examples of similar length, at most ``batch_tokens`` padded
    tokens and ``batch_size`` examples per micro-batch. Packed: the permuted examples are
    taken as they come, at most ``batch_tokens`` tokens and ``batch_size`` examples per
    micro-batch (rows are packed by :func:`loglik.train_packing.collate_packed`, so lengths
    need not match). Then the micro-batches' order is shuffled. ``version`` 1 and 2
    (checkpoints written before) plan as those versions did.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    perm = list(range(len(encoded)))
    if version >= 2:
        rng.shuffle(perm)
    if version < 3:
        batch_size, pack = None, False
    lengths = [row_length(encoded[i]) for i in perm]
    if pack:
        batches = _consecutive(perm, lengths, batch_tokens, batch_size)
    else:
        plan = plan_batches(lengths, batch_tokens, max_batch_size=batch_size)
        batches = [tuple(perm[j] for j in b.indices) for b in plan.batches]
    rng.shuffle(batches)
    return batches


def _consecutive(perm: Sequence[int], lengths: Sequence[int], batch_tokens: int,
                 batch_size: int | None) -> list[tuple[int, ...]]:
    """Cut ``perm`` into runs of at most ``batch_tokens`` tokens and ``batch_size`` items
    (an item longer than the budget alone); items of length 0 are left out."""
    batches: list[tuple[int, ...]] = []
    current: list[int] = []
    used = 0
    for i, n in zip(perm, lengths):
        if n == 0:
            continue
        full = batch_size is not None and len(current) >= batch_size
        if current and (used + n > batch_tokens or full):
            batches.append(tuple(current))
            current, used = [], 0
        current.append(i)
        used += n
    if current:
        batches.append(tuple(current))
    return batches


def steps_of(batches: Sequence[tuple[int, ...]], grad_accum: int) -> list[list[tuple[int, ...]]]:
    """Group batches into optimiser steps of ``grad_accum`` micro-batches (last may be short)."""
    return [list(batches[i:i + grad_accum]) for i in range(0, len(batches), grad_accum)]


def plan_record(train_set: list[Encoded], plans: list[Any], opts: Any, *,
                 batch_size: int, packed: bool, processes: int) -> dict[str, Any]:
    """The run's plan as the first record of ``log.jsonl`` ("kind": "plan")."""
    steps = sum(len(p) for p in plans)
    tokens = sum(row_length(e) for e in train_set if e.response_ids) * opts.epochs
    response = sum(e.num_tokens for e in train_set) * opts.epochs
    return {"kind": "plan", "examples": len(train_set), "epochs": opts.epochs,
            "steps": steps, "steps_per_epoch": [len(p) for p in plans],
            "tokens_per_step": tokens / steps if steps else 0.0,
            "response_tokens_per_step": response / steps if steps else 0.0,
            "batch_size": batch_size, "batch_tokens": opts.batch_tokens,
            "grad_accum": opts.grad_accum, "processes": processes, "packed": packed}


def plan_line(r: dict[str, Any]) -> str:
    """The plan as the line printed at the start of a run."""
    per_epoch = r["steps_per_epoch"]
    span = (f"{per_epoch[0]}" if len(set(per_epoch)) == 1
            else f"{min(per_epoch)}-{max(per_epoch)}")
    return (f"{r['examples']} examples: {r['steps']} optimiser steps ({span} per epoch x "
            f"{r['epochs']}), ~{r['tokens_per_step']:.0f} tokens "
            f"({r['response_tokens_per_step']:.0f} response tokens) per step; micro-batches of "
            f"at most {r['batch_size']} examples and {r['batch_tokens']} tokens, "
            f"{'packed rows' if r['packed'] else 'padded rows'}, x{r['grad_accum']} "
            f"accumulation x{r['processes']} process(es)")
