"""Run the server in a background thread of this process (notebooks, tests, benchmarks).

Example:
    >>> with BackgroundServer(create_app(scorer)) as srv:      # doctest: +SKIP
    ...     Scorer.from_server(srv.url + "/v1", tokenizer=scorer.tokenizer)
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from ..errors import BackendError, require


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving ``app`` on ``host:port`` (a free port by default) in a daemon thread.

    ``start()`` waits up to ``start_timeout`` seconds for the socket; ``stop()`` asks uvicorn to
    exit (it finishes requests in flight) and joins the thread.
    """

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int | None = None,
                 start_timeout: float = 30.0) -> None:
        uvicorn = require("uvicorn", extra="serve", feature="loglik serve")
        self.host, self.port = host, port or free_port(host)
        self.url = f"http://{host}:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=self.port,
                                                    log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=30))
        self.thread = threading.Thread(target=self.server.run, name="loglik-serve",
                                       daemon=True)
        self.start_timeout = start_timeout

    def start(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise BackendError(f"the server on {self.url} did not start within "
                                   f"{self.start_timeout} s")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
