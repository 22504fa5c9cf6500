"""Limits and knobs of ``loglik serve``, validated once at start-up."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

MAX_TOP_LOGPROBS = 20   # the most alternatives ``logprobs`` may ask for (OpenAI's own limit)


@dataclass(frozen=True)
class ServeConfig:
    """What one server accepts and how it batches.

    Args:
        api_key: when set, every request except ``/health`` must carry
            ``Authorization: Bearer <api_key>``.
        max_body_bytes: larger request bodies get 413.
        max_request_tokens: tokens one request may ask to score or generate, all prompts
            together; more gets 413 naming the field.
        max_new_tokens: the largest ``max_tokens`` a completion may ask for.
        max_top_logprobs: the largest ``logprobs`` (top-k alternatives) a request may ask for.
        max_queue: requests waiting for the model; one more gets 503 with ``Retry-After``.
        batch_wait_ms: how long the batcher waits for more requests to join a batch.
        batch_max_tokens: tokens the batcher gathers into one scorer call at most.
        batches_in_flight: batches handed to a model worker process at once (the next one
            waits in its pipe while it runs one); a model in the server process takes one.
        retry_after_s: the ``Retry-After`` a 503 suggests.
    """

    api_key: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_request_tokens: int = 65536
    max_new_tokens: int = 512
    max_top_logprobs: int = MAX_TOP_LOGPROBS
    max_queue: int = 1024
    batch_wait_ms: float = 5.0
    batch_max_tokens: int = 16384
    batches_in_flight: int = 2
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_request_tokens", "max_queue", "batch_max_tokens",
                     "batches_in_flight", "retry_after_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_new_tokens < 0:
            raise ConfigError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if not 0 <= self.max_top_logprobs <= 100:
            raise ConfigError(f"max_top_logprobs must be in 0..100, got {self.max_top_logprobs}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.api_key is not None and not self.api_key:
            raise ConfigError("api_key is empty; unset it or give a non-empty key")
