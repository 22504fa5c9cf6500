"""Packed training batches: several short examples per row, as the scorer packs them.

A padded batch (:func:`loglik.objective.collate`) gives every example a row of its own and
pads it to the longest. A packed batch lays examples one after the other in a row (first-fit
decreasing into rows as long as the micro-batch's longest example), with

* ``position_ids`` restarting at 0 for every example, so each sees the positions it would
  see alone;
* a block-diagonal causal mask (:func:`loglik.masks.allowed`: a token attends only inside its
  own example), turned into what the model takes by the HF backend's
  :func:`~loglik.backends.hf.packed.mask_for_layers` (one additive 4D mask, or one per layer
  type for models that mix sliding-window and full attention);
* ``labels`` as in the padded layout (the response tokens where they sit, -100 elsewhere).
  The shift of :func:`loglik.logprobs.shift` crosses from one example to the next only at a
  context token, whose label is -100, so nothing leaks between examples.

Packed batch format (a padded batch plus two keys)::

    input_ids     (B, T)  examples back to back, right-padded
    labels        (B, T)  response ids where they sit, -100 elsewhere
    position_ids  (B, T)  restart at 0 per example
    sequence_ids  (B, T)  which example of the row (0, 1, ...), -1 = padding

The objective of a packed batch equals the padded batch's, and so do its gradients (float
tolerance; ``tests/test_objective.py``). Models that cannot take a custom 4D mask (flash
attention, flex, some remote code) fail :func:`packing_trains` and are trained padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .backends.hf.packed import NO_CUSTOM_MASK
from .errors import ConfigError
from .objective import IGNORE, collate, response_nll
from .types import Encoded


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit decreasing: indices of ``lengths`` per row, each row at most ``row_tokens``
    long (an item longer than that gets a row of its own).

    >>> pack_rows([3, 5, 2, 4], 7)
    [[1, 2], [3, 0]]
    """
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        r = next((r for r, free in enumerate(room) if free >= n), None)
        if r is None:
            rows.append([i])
            room.append(row_tokens - n)
        else:
            rows[r].append(i)
            room[r] -= n
    return rows


def collate_packed(encoded: Sequence[Any], *, row_tokens: int | None = None,
                   pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Packed training batch from :class:`~loglik.types.Encoded` records (module docstring).

    Rows are at most ``max(row_tokens, longest example)`` tokens (default: the longest
    example, the scorer's rule: a row is never longer than padding would make it, and
    attention, O(T^2) per row, costs no more); each example reads ``context_ids +
    response_ids``. When no two examples share a row, this is :func:`~loglik.objective.collate`.

    >>> from loglik.types import Encoded
    >>> b = collate_packed([Encoded((1, 5), (6, 7), "", "joint"), Encoded((1,), (9,), "", "joint")],
    ...                    row_tokens=8)
    >>> b["input_ids"].tolist(), b["position_ids"].tolist(), b["sequence_ids"].tolist()
    ([[1, 5, 6, 7, 1, 9]], [[0, 1, 2, 3, 0, 1]], [[0, 0, 0, 0, 1, 1]])
    >>> b["labels"].tolist()
    [[-100, -100, 6, 7, -100, 9]]
    """
    for b, e in enumerate(encoded):
        if not e.context_ids:
            raise ConfigError(f"example {b} of the batch has no context token to predict its "
                              "first response token from; encode it with loglik.tokenize.Encoder")
    seqs = [list(e.context_ids) + list(e.response_ids) for e in encoded]
    longest = max(len(s) for s in seqs)
    rows = pack_rows([len(s) for s in seqs], max(row_tokens or 0, longest))
    if len(rows) == len(seqs):   # nothing shares a row: the padded batch, no 4D mask to pay
        return collate(encoded, pad_id=pad_id)
    width = max(sum(len(seqs[i]) for i in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)                    # (B, T)
    labels = torch.full(shape, IGNORE, dtype=torch.long)                 # (B, T)
    pos = torch.zeros(shape, dtype=torch.long)                           # (B, T)
    seq = torch.full(shape, -1, dtype=torch.long)                        # (B, T)
    for r, row in enumerate(rows):
        at = 0
        for j, i in enumerate(row):
            s, n = seqs[i], len(encoded[i].context_ids)
            ids[r, at:at + len(s)] = torch.tensor(s)
            labels[r, at + n:at + len(s)] = torch.tensor(s[n:], dtype=torch.long)
            pos[r, at:at + len(s)] = torch.arange(len(s))
            seq[r, at:at + len(s)] = j
            at += len(s)
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "sequence_ids": seq}


# Probe: three examples of different lengths, packed into one row.
_PROBE = (((0, 1, 2), (3, 4, 5, 6)), ((7,), (8, 9)), ((10, 11), (12, 13, 14)))


def packing_trains(model: Any) -> bool:
    """Does the packed objective of a probe equal the padded one (fp32: 1e-4 nats)?

    Run once per training run, in eval mode (no dropout), without gradients; a model whose
    attention takes no custom mask, or that raises on a 4D mask, is trained padded.
    """
    impl = getattr(model.config, "_attn_implementation", None)
    if impl in NO_CUSTOM_MASK:
        return False
    vocab = model.get_input_embeddings().weight.shape[0]
    probe = [Encoded(tuple(t % vocab for t in c), tuple(t % vocab for t in y), "", "joint")
             for c, y in _PROBE]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            padded, _ = response_nll(model, collate(probe), reduction="sum")
            one_row = collate_packed(probe, row_tokens=64)    # all three in one row
            packed, _ = response_nll(model, one_row, reduction="sum")
    except Exception:  # a model that rejects 4D masks or position ids
        return False
    finally:
        model.train(was_training)
    tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2
    return abs(padded.item() - packed.item()) <= tol
