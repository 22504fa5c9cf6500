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


class _PaddingAccounts:
    """Padding figures of a plan that has ``batches`` (each with ``padded_tokens``) and
    ``real_tokens``."""

    @property
    def padded_tokens(self) -> int:
        return sum(b.padded_tokens for b in self.batches)

    @property
    def padding_waste(self) -> float:
        """Fraction of the forwarded tokens that are padding."""
        padded = self.padded_tokens
        return 1 - self.real_tokens / padded if padded else 0.0


@dataclass(frozen=True)
class Plan(_PaddingAccounts):
    batches: tuple[Batch, ...]
    real_tokens: int


#: Padded tokens per forward pass when the caller names none. On CPU a batch whose
#: activations stay in the last-level cache runs faster than a bigger one (bench/, the 58M
#: Llama, 2 threads: pairs-512 took 106-110 s at 2048 tokens, 124 s at 4096, 125-138 s at
#: 8192; choices-128 36 vs 42 s; long-32 61 vs 68 s) and peaks lower; an accelerator needs
#: bigger batches to stay busy.
CPU_BATCH_TOKENS = 2048
ACCELERATOR_BATCH_TOKENS = 8192


def default_batch_tokens(backend: object) -> int:
    """The token budget for a backend: 2048 on CPU (or a backend without a device), else 8192.

    >>> default_batch_tokens(object())
    2048
    """
    device = getattr(backend, "device", None)
    kind = str(getattr(device, "type", device) or "cpu")
    return CPU_BATCH_TOKENS if kind.startswith("cpu") else ACCELERATOR_BATCH_TOKENS


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


# -- shared contexts and packed rows -------------------------------------------------------
#
# A request reads context + target[:-1]. Requests whose contexts are the same ids read that
# context once: a Unit is [context, branch_1, branch_2, ...], where branch j is request j's
# target[:-1] and attends to the context and to itself only (a tree mask). Short units are
# packed side by side in one row (block-diagonal mask, positions restarting per unit).


@dataclass(frozen=True)
class Unit:
    """One shared context and the requests scored after it, as they are laid out in a row.

    ``members`` index the planned requests; ``branch_lengths[j]`` is how many tokens member j
    adds after the context (its targets but the last). ``length`` is the unit's tokens in a row.
    """

    context: tuple[int, ...]
    members: tuple[int, ...]
    branch_lengths: tuple[int, ...]

    @property
    def length(self) -> int:
        return len(self.context) + sum(self.branch_lengths)


@dataclass(frozen=True)
class PackedBatch:
    """Rows forwarded together; each row holds one or more units, padded to ``width``."""

    rows: tuple[tuple[Unit, ...], ...]
    width: int

    @property
    def padded_tokens(self) -> int:
        return self.width * len(self.rows)

    @property
    def simple(self) -> bool:
        """True when every row is one request alone (no packing or sharing to mask)."""
        return all(len(row) == 1 and len(row[0].members) == 1 for row in self.rows)


@dataclass(frozen=True)
class PackedPlan(_PaddingAccounts):
    """The packed batches, with the token counts that say how much work was saved.

    ``request_tokens`` is what the requests read one by one (context + targets[:-1] each);
    ``real_tokens`` what the rows read (shared contexts once); ``padded_tokens`` what the
    forward passes compute, padding included.
    """

    batches: tuple[PackedBatch, ...]
    request_tokens: int
    real_tokens: int

    @property
    def sharing_saved(self) -> float:
        """Fraction of the requests' tokens not forwarded because a context was shared."""
        return 1 - self.real_tokens / self.request_tokens if self.request_tokens else 0.0


def group_units(contexts: Sequence[Sequence[int]], target_lengths: Sequence[int], *,
                max_unit_tokens: int, share: bool = True) -> list[Unit]:
    """Group requests with identical context ids into units of at most ``max_unit_tokens``.

    Requests with no targets are left out. A group too long for one unit is split into
    several units that each repeat the context (a unit is never shorter than one request).
    With ``share=False`` every request is a unit of its own.

    >>> [u.members for u in group_units([(1, 2), (1, 2), (3,)], [2, 3, 1], max_unit_tokens=9)]
    [(0, 1), (2,)]
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, n) in enumerate(zip(contexts, target_lengths)):
        if n <= 0:
            continue
        key = tuple(ctx)
        groups.setdefault(key if share else (i, *key), []).append(i)
    units: list[Unit] = []
    for members in groups.values():
        context = tuple(contexts[members[0]])
        current: list[int] = []
        used = len(context)
        for i in members:
            branch = target_lengths[i] - 1
            if current and used + branch > max_unit_tokens:
                units.append(Unit(context, tuple(current),
                                  tuple(target_lengths[j] - 1 for j in current)))
                current, used = [], len(context)
            current.append(i)
            used += branch
        units.append(Unit(context, tuple(current), tuple(target_lengths[j] - 1 for j in current)))
    return units


def pack_units(units: Sequence[Unit], batch_tokens: int, *, pack: bool = True,
               max_batch_size: int | None = None) -> tuple[PackedBatch, ...]:
    """Lay units into rows and rows into batches of at most ``batch_tokens`` padded tokens.

    Units are taken longest first (first-fit decreasing). A batch's width is its first
    (longest) unit's length, so packing never makes a row longer than it would be padded
    anyway: a unit goes into the first row of any batch with room for it, else into a new
    row of the last batch while that batch has budget, else it starts a new batch. With
    ``pack=False`` each row holds one unit (plain length-sorted batching).

    >>> [[[u.members for u in r] for r in b.rows] for b in pack_units(
    ...     [Unit((1,), (0,), (5,)), Unit((1,), (1,), (2,)), Unit((2,), (2,), (2,))], 12)]
    [[[(0,)], [(1,), (2,)]]]
    """
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be >= 1, got {batch_tokens}")
    order = sorted(units, key=lambda u: -u.length)
    batches: list[tuple[int, list[list[Unit]]]] = []    # (width, rows)
    free: list[list[int]] = []                          # room left per row, per batch
    for unit in order:
        n = unit.length
        if pack:
            slot = next(((b, r) for b, rooms in enumerate(free)
                         for r, room in enumerate(rooms) if room >= n), None)
            if slot is not None:
                b, r = slot
                batches[b][1][r].append(unit)
                free[b][r] -= n
                continue
        if batches:
            width, rows = batches[-1]
            full = max_batch_size is not None and len(rows) >= max_batch_size
            if not full and width * (len(rows) + 1) <= batch_tokens:
                rows.append([unit])
                free[-1].append(width - n)
                continue
        batches.append((n, [[unit]]))
        free.append([0])
    return tuple(PackedBatch(tuple(tuple(r) for r in rows), width) for width, rows in batches)


def plan_packed(contexts: Sequence[Sequence[int]], target_lengths: Sequence[int],
                batch_tokens: int, *, share: bool = True, pack: bool = True,
                max_batch_size: int | None = None) -> PackedPlan:
    """Shared-context units, packed into rows, batched by a token budget (see above).

    >>> p = plan_packed([(1, 2, 3), (1, 2, 3)], [4, 4], 64)
    >>> p.request_tokens, p.real_tokens, len(p.batches)
    (12, 9, 1)
    """
    units = group_units(contexts, target_lengths, share=share,
                        max_unit_tokens=max(batch_tokens, 1))
    batches = pack_units(units, batch_tokens, pack=pack, max_batch_size=max_batch_size)
    request_tokens = sum(len(c) + n - 1 for c, n in zip(contexts, target_lengths) if n > 0)
    return PackedPlan(batches, request_tokens, sum(u.length for u in units))
