"""``loglik serve``: an HTTP API that gives any client loglik's exact log-probs.

:func:`create_app` builds the ASGI app (:mod:`loglik.serve.app`) over a
:class:`loglik.Scorer`; :func:`run` starts it under uvicorn. The parts:

* :mod:`~loglik.serve.schemas` — request bodies checked field by field, errors naming the field;
* :mod:`~loglik.serve.completions` — the OpenAI completions contract (echo, logprobs, generation);
* :mod:`~loglik.serve.batcher` — concurrent requests coalesced into the scorer's batches;
* :mod:`~loglik.serve.metrics` — Prometheus counters and histograms;
* :mod:`~loglik.serve.config` — the limits (:class:`ServeConfig`);
* :mod:`~loglik.serve.background` — the server in a thread (:class:`BackgroundServer`);
* :mod:`~loglik.serve.worker` — the model in its own process (:func:`start_worker`), over
  :mod:`~loglik.serve.wire` (batches as flat buffers).

Example:
    >>> from loglik.serve import run
    >>> run(Scorer.from_pretrained("gpt2"), port=8000, model_name="gpt2")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from .background import BackgroundServer, free_port
from .config import MAX_TOP_LOGPROBS, ServeConfig


def create_app(scorer: Any, config: ServeConfig | None = None, *,
               model_name: str = "loglik") -> Any:
    """The Starlette app serving ``scorer`` (see :mod:`loglik.serve.app`)."""
    from .app import create_app as _create

    return _create(scorer, config, model_name=model_name)


def run(scorer: Any, *, host: str = "127.0.0.1", port: int = 8000,
        config: ServeConfig | None = None, model_name: str = "loglik",
        graceful_timeout_s: float = 30.0, log_level: str = "info") -> None:
    """Serve until SIGINT/SIGTERM; requests in flight are finished before it returns (and a
    model worker, :func:`start_worker`, is stopped after them)."""
    from ..errors import require

    uvicorn = require("uvicorn", extra="serve", feature="loglik serve")
    app = create_app(scorer, config, model_name=model_name)
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False,
                    timeout_graceful_shutdown=graceful_timeout_s)
    finally:   # after the requests in flight: a model worker stops too
        from .worker import WorkerBackend

        if isinstance(scorer.backend, WorkerBackend):
            scorer.backend.close()


def start_worker(model: str | None, **options: Any) -> Any:
    """A :class:`loglik.Scorer` whose model runs in a worker process (see
    :mod:`loglik.serve.worker`); ``options`` are :meth:`Scorer.from_pretrained`'s."""
    from .worker import start_worker as _start

    return _start(model, **options)


__all__ = ["MAX_TOP_LOGPROBS", "BackgroundServer", "ServeConfig", "create_app", "free_port", "run",
           "start_worker"]
