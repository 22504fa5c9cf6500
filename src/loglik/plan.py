"""Which examples go through the model together: batches by a token budget, sorted by length.

Padding is waste: rows in a batch are padded to the longest, so examples of similar length
are batched together, and a batch holds as many rows as fit in ``batch_tokens`` padded
tokens (not a fixed count).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Batch:
    """Indices (into the planned sequence) of the examples forwarded together."""

    indices: tuple[int, ...]
    width: int            # padded row length in tokens

    @property
    def padded_tokens(self) -> int:
        return self.width * len(self.indices)


@dataclass(frozen=True)
class Plan:
    batches: tuple[Batch, ...]
    real_tokens: int

    @property
    def padded_tokens(self) -> int:
        return sum(b.padded_tokens for b in self.batches)

    @property
    def padding_waste(self) -> float:
        """Fraction of the forwarded tokens that are padding."""
        padded = self.padded_tokens
        return 1 - self.real_tokens / padded if padded else 0.0


def plan_batches(lengths: Sequence[int], batch_tokens: int, *,
                 max_batch_size: int | None = None) -> Plan:
    """Group items into batches of at most ``batch_tokens`` padded tokens.

    Items are taken longest first, so each batch's rows have similar lengths; an item longer
    than the budget gets a batch of its own. Items of length 0 (nothing to forward) are left
    out of every batch.

    >>> [b.indices for b in plan_batches([3, 10, 4, 9], 20).batches]
    [(1, 3), (2, 0)]
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: -lengths[i])
    batches: list[Batch] = []
    current: list[int] = []
    width = 0
    for i in order:
        n = lengths[i]
        new_width = max(width, n)
        full = max_batch_size is not None and len(current) >= max_batch_size
        if current and (new_width * (len(current) + 1) > batch_tokens or full):
            batches.append(Batch(tuple(current), width))
            current, new_width = [], n
        current.append(i)
        width = new_width
    if current:
        batches.append(Batch(tuple(current), width))
    return Plan(tuple(batches), sum(n for n in lengths if n > 0))
