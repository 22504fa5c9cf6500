"""What crosses the pipe between ``loglik serve`` and its model worker: flat arrays, not objects.

A coalesced batch of N requests is two ``int32`` buffers; its N results are a few flat
buffers whose lengths the server already knows (each request's target count), so nothing
per request or per token is pickled::

    requests  lengths  int32 [2N]       len(context_ids), len(target_ids) per request
              ids      int32 [sum]      context_ids + target_ids per request, back to back
    results   logprobs float64 [T]      T = sum of len(target_ids) (float64: exact round trip)
              greedy   uint8   [T]
              ranks    int32   [T]      or None when the detail did not ask for them
              entropies float64 [T]     or None
              top      int32 [T] counts, then int32 ids and float64 log-probs [sum counts]

The naive equivalent is ``pickle.dumps(requests)`` / ``pickle.dumps(results)``; the tests
compare a round trip with the objects themselves.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from itertools import chain

from ..types import Request, TokenResult

Requests = tuple[bytes, bytes]
Results = tuple[bytes, bytes, bytes | None, bytes | None, tuple[bytes, bytes, bytes] | None]


def pack_requests(requests: Sequence[Request]) -> Requests:
    """Token-id requests as (lengths, ids) buffers."""
    lengths = array("i", chain.from_iterable((len(r.context_ids), len(r.target_ids))
                                             for r in requests))
    ids = array("i", chain.from_iterable(chain(r.context_ids, r.target_ids) for r in requests))
    return lengths.tobytes(), ids.tobytes()


def unpack_requests(packed: Requests) -> list[Request]:
    """The inverse of :func:`pack_requests`."""
    lengths, ids = _array("i", packed[0]), _array("i", packed[1])
    out, at = [], 0
    for n in range(0, len(lengths), 2):
        c, t = lengths[n], lengths[n + 1]
        out.append(Request(tuple(ids[at:at + c]), tuple(ids[at + c:at + c + t])))
        at += c + t
    return out


def pack_results(results: Sequence[TokenResult]) -> Results:
    """Per-token results as flat buffers (the detail decides which are present)."""
    first = results[0] if results else TokenResult([], [])

    def flat(kind: str, name: str) -> bytes | None:
        if getattr(first, name) is None:
            return None
        return array(kind, chain.from_iterable(getattr(r, name) for r in results)).tobytes()

    top = None
    if first.top is not None:
        alts = [alt for r in results for alt in r.top]   # type: ignore[union-attr]
        top = (array("i", map(len, alts)).tobytes(),
               array("i", (t for alt in alts for t, _ in alt)).tobytes(),
               array("d", (lp for alt in alts for _, lp in alt)).tobytes())
    return (flat("d", "logprobs"),   # type: ignore[return-value]
            bytes(chain.from_iterable(r.greedy for r in results)),
            flat("i", "ranks"), flat("d", "entropies"), top)


def unpack_results(packed: Results, counts: Sequence[int]) -> list[TokenResult]:
    """The inverse of :func:`pack_results`; ``counts``: target tokens per request, in order."""
    logprobs = _array("d", packed[0])
    greedy = packed[1]
    ranks = _array("i", packed[2]) if packed[2] is not None else None
    entropies = _array("d", packed[3]) if packed[3] is not None else None
    top = None
    if packed[4] is not None:
        sizes, ids, lps = (_array(k, b) for k, b in zip("iid", packed[4]))
        top, at = [], 0
        for k in sizes:
            top.append(list(zip(ids[at:at + k], lps[at:at + k])))
            at += k
    out, at = [], 0
    for n in counts:
        end = at + n
        out.append(TokenResult(
            logprobs[at:end].tolist(), [bool(g) for g in greedy[at:end]],
            ranks[at:end].tolist() if ranks is not None else None,
            entropies[at:end].tolist() if entropies is not None else None,
            top[at:end] if top is not None else None))
        at = end
    if at != len(logprobs):
        raise ValueError(f"the worker answered {len(logprobs)} token log-probs for requests "
                         f"with {at} target tokens")
    return out


def _array(kind: str, data: bytes) -> array:
    out = array(kind)
    out.frombytes(data)
    return out
