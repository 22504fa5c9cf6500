"""The backend protocol: token ids in, per-token results out. A backend never sees text."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from ..types import Detail, Request, TokenResult


@runtime_checkable
class Backend(Protocol):
    """Computes log Pr(target_i | context, target_<i) for each request.

    Attributes:
        max_length: the longest input (in tokens) the model can read, or None if unbounded.
        vocab_size: number of rows of the output distribution.
    """

    max_length: int | None
    vocab_size: int

    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        """One result per request, in order; ``len(result.logprobs) == len(target_ids)``."""
        ...


def check_results(requests: Sequence[Request], results: Sequence[TokenResult]) -> None:
    """Raise BackendError unless every request got one result of the right length."""
    from ..errors import BackendError

    if len(results) != len(requests):
        raise BackendError(f"backend returned {len(results)} results for {len(requests)} requests")
    for i, (req, res) in enumerate(zip(requests, results)):
        if len(res.logprobs) != len(req.target_ids):
            raise BackendError(f"request {i}: backend returned {len(res.logprobs)} log-probs "
                               f"for {len(req.target_ids)} target tokens")
