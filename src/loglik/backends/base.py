"""The backend protocol: token ids in, per-token results out. A backend never sees text.

Every backend implements :class:`Backend` (``score``, ``max_length``, ``vocab_size``). What
some engines can do beyond that is an optional *capability*: a backend lists the ones it has
in ``capabilities`` and implements the matching protocol below; the scorer, the comparison,
the trainer and the audit ask with :func:`supports`, never by probing private names::

    capability           protocol               used by
    -------------------  ---------------------  ------------------------------------------
    "packed_rows"        PackedScoring          scorer: several requests side by side in a
                                                row (block-diagonal, positions restarting)
    "shared_context"     PackedScoring          scorer: requests with the same context read
                                                it once (tree row or reused KV cache)
    "distributions"      DistributionSource     compare's KL / top-1, the word correction:
                                                full next-token distributions, chunk by chunk
    "torch_model"        TorchModel             audit: the model's own forward (KV-cache walk,
                                                left padding), its dtype and tokenizer check

A backend with no capability is scored in plain length-sorted batches and gives every
number ``loglik score`` prints. :class:`loglik.backends.fake.FakeBackend` is the smallest
complete example.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import BackendError
from ..types import Detail, Request, TokenResult

if TYPE_CHECKING:   # the planner's types, for annotations only
    import torch

    from ..plan import PackedBatch

PACKED_ROWS = "packed_rows"
SHARED_CONTEXT = "shared_context"
DISTRIBUTIONS = "distributions"
TORCH_MODEL = "torch_model"
CAPABILITIES = (PACKED_ROWS, SHARED_CONTEXT, DISTRIBUTIONS, TORCH_MODEL)


@runtime_checkable
class Backend(Protocol):
    """Computes log Pr(target_i | context, target_<i) for each request.

    Attributes:
        max_length: the longest input (in tokens) the model can read, or None if unbounded.
        vocab_size: number of rows of the output distribution.
        capabilities: names from :data:`CAPABILITIES` this backend implements (may be absent,
            meaning none).
        tolerance: optional; the per-sequence agreement in nats to expect between two exact
            paths of this engine (:func:`loglik.logprobs.tolerance`); the audit uses it.
    """

    max_length: int | None
    vocab_size: int

    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        """One result per request, in order; ``len(result.logprobs) == len(target_ids)``.

        A request with no targets gets an empty result; one with targets but no context is
        a :class:`~loglik.errors.BackendError` (nothing predicts its first token)."""
        ...


@runtime_checkable
class PackedScoring(Protocol):
    """``packed_rows`` / ``shared_context``: score a planned :class:`~loglik.plan.PackedBatch`.

    ``Unit.members`` index ``requests``. The result maps each member request's index to its
    result, equal to scoring that request alone up to float rounding (1e-4 nats per sequence
    in fp32). ``batch_tokens`` bounds any extra step the backend takes (rows x keys).
    """

    def score_packed(self, batch: PackedBatch, requests: Sequence[Request],
                     detail: Detail = Detail(), batch_tokens: int | None = None
                     ) -> dict[int, TokenResult]:
        ...


@runtime_checkable
class DistributionSource(Protocol):
    """``distributions``: every next-token distribution at the positions that predict targets.

    ``prepare(requests)`` runs what is needed once (the model body) and returns a sequence with
    one row per target, request after request; ``log_distributions(rows[a:b])`` turns a slice
    of it into (b - a, V) fp32 log-softmax values. Two steps so a caller holds at most a chunk
    of (C, V) values at a time.
    """

    def prepare(self, requests: Sequence[Request]) -> Any:
        ...

    def log_distributions(self, rows: Any) -> torch.Tensor:
        ...


@runtime_checkable
class TorchModel(Protocol):
    """``torch_model``: a ``transformers`` model whose own forward the audit can call.

    ``model`` takes ``input_ids``, ``attention_mask``, ``position_ids`` and a KV cache like a
    ``transformers`` causal LM; ``dtype`` is its parameter dtype; ``tolerance`` the
    per-sequence agreement (nats) to expect from it (:func:`loglik.logprobs.tolerance`).
    """

    model: Any
    dtype: Any
    tolerance: float


def supports(backend: Any, capability: str) -> bool:
    """Does ``backend`` declare ``capability`` (one of :data:`CAPABILITIES`)?"""
    if capability not in CAPABILITIES:
        raise ValueError(f"unknown capability {capability!r}; one of {', '.join(CAPABILITIES)}")
    return capability in capabilities_of(backend)


def capabilities_of(backend: Any) -> frozenset[str]:
    """The capabilities ``backend`` declares (none when it has no ``capabilities``)."""
    declared: Iterable[str] = getattr(backend, "capabilities", ()) or ()
    return frozenset(declared)


def check_results(requests: Sequence[Request], results: Sequence[TokenResult]) -> None:
    """Raise BackendError unless every request got one result of the right length."""
    if len(results) != len(requests):
        raise BackendError(f"backend returned {len(results)} results for {len(requests)} requests")
    for i, (req, res) in enumerate(zip(requests, results)):
        if len(res.logprobs) != len(req.target_ids):
            raise BackendError(f"request {i}: backend returned {len(res.logprobs)} log-probs "
                               f"for {len(req.target_ids)} target tokens")
