"""How requests are laid out in a llama.cpp batch: shared contexts once, outputs only where needed.

A llama.cpp batch is a flat list of tokens, each with a position, the sequences (KV-cache
streams) it belongs to, and a flag saying whether its logits are wanted. A *unit* is one
context and the requests scored after it (:class:`loglik.plan.Unit`)::

    context c_0 .. c_{n-1}       positions 0 .. n-1, sequences {s_1 .. s_k}, output at c_{n-1}
    request j: t_0 .. t_{m-2}    positions n .. n+m-2, sequence {s_j}, output at every token

The context's tokens belong to every member's sequence, so the context is evaluated and kept
in the KV cache once and each request attends to it and to its own tokens only (the tree of
llama.cpp's multiple-choice mode, which puts a shared prefix in several sequences). Output
row ``r`` (the r-th flagged token) predicts the token after it: the context's last token
predicts every member's first target, request j's token t_i predicts t_{i+1}.

Nothing here calls llama.cpp: :func:`layout` returns numpy arrays that the backend copies into
its ``llama_batch``, and :func:`split_units` cuts units to fit one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# (request key, target ids): one member of a unit
Branch = tuple[int, tuple[int, ...]]
# (context ids, members): one unit
Unit = tuple[tuple[int, ...], list[Branch]]


@dataclass
class Layout:
    """One decode call's inputs and how to read its outputs.

    ``tokens``, ``positions``, ``n_seq``, ``flags`` are (T,); ``seq_ids`` is (T, S) with the
    first ``n_seq[i]`` entries of row i used. ``rows`` (N,) are output rows, one per scored
    target, request after request, and ``targets`` (N,) the ids they predict;
    ``keys[j]`` is request j's key and ``lengths[j]`` its number of targets.
    """

    tokens: np.ndarray
    positions: np.ndarray
    n_seq: np.ndarray
    seq_ids: np.ndarray
    flags: np.ndarray
    rows: np.ndarray
    targets: np.ndarray
    keys: list[int]
    lengths: list[int]
    seq_ptrs: np.ndarray | None = None   # (T,) addresses of the seq_ids rows, set by the backend

    @property
    def n_outputs(self) -> int:
        return int(self.flags.sum())


def unit_tokens(unit: Unit) -> int:
    """Tokens a unit puts in the batch: its context once plus each member's targets[:-1]."""
    context, branches = unit
    return len(context) + sum(len(t) - 1 for _, t in branches)


def split_units(units: Sequence[Unit], max_tokens: int, max_seqs: int) -> list[list[Unit]]:
    """Group units into batches of at most ``max_tokens`` tokens and ``max_seqs`` sequences.

    A unit too big for one batch is cut into units that repeat its context (each request
    fits, as the context length was checked before). Order is kept.

    >>> u = ((1, 2), [(0, (3, 4)), (1, (5, 6))])
    >>> [[len(m) for _, m in g] for g in split_units([u, u], 6, 4)]
    [[2], [2]]
    >>> [[len(m) for _, m in g] for g in split_units([u], 3, 4)]
    [[1], [1]]
    """
    groups: list[list[Unit]] = []
    current: list[Unit] = []
    used_tokens = used_seqs = 0
    for context, branches in units:
        for piece in _cut(context, branches, max_tokens, max_seqs):
            n, k = unit_tokens(piece), len(piece[1])
            if current and (used_tokens + n > max_tokens or used_seqs + k > max_seqs):
                groups.append(current)
                current, used_tokens, used_seqs = [], 0, 0
            current.append(piece)
            used_tokens += n
            used_seqs += k
    if current:
        groups.append(current)
    return groups


def _cut(context: tuple[int, ...], branches: list[Branch], max_tokens: int,
         max_seqs: int) -> list[Unit]:
    pieces: list[Unit] = []
    current: list[Branch] = []
    used = len(context)
    for key, targets in branches:
        extra = len(targets) - 1
        if current and (used + extra > max_tokens or len(current) >= max_seqs):
            pieces.append((context, current))
            current, used = [], len(context)
        current.append((key, targets))
        used += extra
    if current:
        pieces.append((context, current))
    return pieces


def layout(units: Sequence[Unit]) -> Layout:
    """The batch arrays for ``units`` (each with at least one member and one context token).

    >>> lay = layout([((1, 2), [(7, (3, 4)), (8, (5,))])])
    >>> lay.tokens.tolist(), lay.positions.tolist(), lay.flags.tolist()
    ([1, 2, 3], [0, 1, 2], [0, 1, 1])
    >>> lay.seq_ids.tolist(), lay.rows.tolist(), lay.targets.tolist(), lay.keys
    ([[0, 1], [0, 1], [0, 0]], [0, 1, 0], [3, 4, 5], [7, 8])
    """
    total = sum(unit_tokens(u) for u in units)
    max_seqs = max((len(b) for _, b in units), default=1)
    tokens = np.empty(total, dtype=np.int32)                   # (T,)
    positions = np.empty(total, dtype=np.int32)                # (T,)
    n_seq = np.ones(total, dtype=np.int32)                     # (T,)
    seq_ids = np.zeros((total, max_seqs), dtype=np.int32)      # (T, S)
    flags = np.ones(total, dtype=np.int8)                      # (T,)
    rows: list[np.ndarray] = []
    targets: list[tuple[int, ...]] = []
    keys, lengths = [], []
    at = out = seq = 0
    for context, branches in units:
        n, k = len(context), len(branches)
        end = at + n
        tokens[at:end] = context
        positions[at:end] = np.arange(n)
        n_seq[at:end] = k
        seq_ids[at:end, :k] = np.arange(seq, seq + k)
        flags[at:end - 1] = 0                                  # only c_{n-1} is read
        context_row, out, at = out, out + 1, end
        for j, (key, tgt) in enumerate(branches):
            m = len(tgt) - 1
            tokens[at:at + m] = tgt[:-1]
            positions[at:at + m] = np.arange(n, n + m)
            seq_ids[at:at + m, 0] = seq + j
            rows.append(np.concatenate(([context_row], np.arange(out, out + m))))
            targets.append(tgt)
            keys.append(key)
            lengths.append(len(tgt))
            at, out = at + m, out + m
        seq += k
    flat_rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    flat_targets = np.fromiter((t for tgt in targets for t in tgt), dtype=np.int64)
    return Layout(tokens, positions, n_seq, seq_ids, flags, flat_rows.astype(np.int64),
                  flat_targets, keys, lengths)
