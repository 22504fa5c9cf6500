"""The model in its own process: ``loglik serve`` with a model worker.

In one process the event loop, the tokenizer thread and the model thread share one GIL, so
the server is in effect one core however many the machine has (README, "serve"). With a
worker, the server process keeps HTTP, validation, coalescing and tokenisation; a worker
process (``multiprocessing``, spawn) loads the model itself from the same arguments as
:meth:`Scorer.from_pretrained` (a model is never pickled) and runs the coalesced batches.

:func:`start_worker` returns an ordinary :class:`~loglik.Scorer` for the server process: its
tokenizer and encoder are the worker's (pickled once at start-up: the same vocabulary and
rules), and its backend is a :class:`WorkerBackend`, which sends each call's token ids down a
pipe (:mod:`~loglik.serve.wire`: flat buffers) and waits for the answer. The worker plans
and scores them with its own scorer, so the numbers are the ones it would give in process.

A worker that dies (killed, out of memory) turns every call into :class:`WorkerDied` (a 503
with that message, and one log line), never a hang: the pipe reports end-of-file as soon as
the worker's end is gone. The worker ignores SIGINT and SIGTERM (a Ctrl-C reaches the whole
process group): the server stops it with a message once the requests in flight are done,
and it exits by itself when the server's end of the pipe closes.

Example:
    >>> scorer = start_worker("path/to/model", threads=1)       # doctest: +SKIP
    >>> with BackgroundServer(create_app(scorer)) as srv: ...   # doctest: +SKIP
    >>> scorer.backend.close()                                   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import signal
import threading
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from ..errors import BackendError, LoglikError, ModelLoadError
from ..types import Detail, Request, TokenResult
from . import wire

log = logging.getLogger("loglik.serve")


class WorkerDied(BackendError):
    """The model worker process is gone; the server cannot score until it is restarted."""


class WorkerBackend:
    """The server process's end of the model worker: a backend over a pipe.

    ``run_requests`` sends a whole coalesced batch (the worker plans it);
    ``score`` (the :class:`~loglik.backends.base.Backend` protocol) does the same, so the
    front :class:`~loglik.Scorer` can score on its own too. Several threads may call at once
    (the batcher keeps two batches in flight, so the worker never waits for the next one):
    calls are sent in turn, the worker answers them in the order it got them, and each caller
    reads the answer of its own ticket.
    """

    def __init__(self, process: Any, conn: Any, info: dict[str, Any]) -> None:
        self.process, self.conn = process, conn
        self.max_length: int | None = info["max_length"]
        self.vocab_size: int = info["vocab_size"]
        self.is_encoder_decoder: bool = info["is_encoder_decoder"]
        self.device = info["device"]
        self.pid: int = process.pid
        self._send = threading.Lock()
        self._turn = threading.Condition()      # whose answer is next on the pipe
        self._sent = self._received = 0         # tickets issued, answers read
        self._dead: str | None = None

    def score(self, requests: Sequence[Request], detail: Detail = Detail()
              ) -> list[TokenResult]:
        return self.run_requests(requests, detail)

    def run_requests(self, requests: Sequence[Request], detail: Detail = Detail()
                     ) -> list[TokenResult]:
        """``Scorer.run_requests`` in the worker: one result per request, in order."""
        if not requests:
            return []
        packed = self._call("score", ((detail.rank, detail.entropy, detail.top_k),
                                      wire.pack_requests(requests)))
        return wire.unpack_results(packed, [len(r.target_ids) for r in requests])

    def generate(self, ids: Sequence[int], req: Any, eos: int | None) -> list[int]:
        """New token ids from the worker's model (:func:`loglik.serve.completions.generate`)."""
        return self._call("generate", (list(ids), replace(req, prompts=[]), eos))

    def _call(self, op: str, payload: Any) -> Any:
        with self._send:
            if self._dead is not None:
                raise WorkerDied(self._dead)
            try:
                self.conn.send((op, payload))
            except (EOFError, OSError) as exc:
                self._died(exc)
            ticket = self._sent
            self._sent += 1
        with self._turn:
            while self._received != ticket and self._dead is None:
                self._turn.wait()
            if self._dead is not None:
                raise WorkerDied(self._dead)
            try:
                status, value = self.conn.recv()
            except (EOFError, OSError) as exc:
                self._died(exc)
            finally:
                self._received += 1
                self._turn.notify_all()
        if status == "error":
            raise _rebuild(value)
        return value

    def _died(self, exc: BaseException) -> None:
        """The pipe is gone: say why once, wake every waiting caller, raise WorkerDied."""
        self.process.join(5)
        code = self.process.exitcode
        how = (f"killed by signal {-code}" if code is not None and code < 0 else
               f"exit code {code}" if code is not None else type(exc).__name__)
        if self._dead is None:
            self._dead = (f"the model worker process (pid {self.pid}) died ({how}); "
                          "this server cannot score until it is restarted")
            log.error("%s", self._dead)
        with self._turn:
            self._turn.notify_all()
        raise WorkerDied(self._dead) from None

    @property
    def alive(self) -> bool:
        return self._dead is None and self.process.is_alive()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker (after the call in progress, if any) and wait for it to exit."""
        if self._dead is None and self.process.is_alive():
            try:
                self._call("stop", None)
            except WorkerDied:
                pass
        with self._send, self._turn:
            self._dead = self._dead or "the model worker was stopped (the server is shutting down)"
            self._turn.notify_all()
            self.conn.close()
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("the model worker (pid %d) did not exit within %s s; killing it",
                        self.pid, timeout)
            self.process.kill()
            self.process.join(5)


def start_worker(model: str | None, *, start_timeout: float = 600.0, **options: Any) -> Any:
    """Start a worker process that loads ``Scorer.from_pretrained(model, **options)``; return
    the server process's :class:`~loglik.Scorer` over it (backend: :class:`WorkerBackend`).

    Raises what loading raised in the worker (a :class:`~loglik.errors.LoglikError` keeps its
    message), or :class:`ModelLoadError` if the worker exits or does not answer within
    ``start_timeout`` seconds.
    """
    from ..scorer import Scorer

    ctx = multiprocessing.get_context("spawn")
    conn, child = ctx.Pipe()
    process = ctx.Process(target=_worker_main, args=(child, model, options),
                          name="loglik-model-worker", daemon=True)
    process.start()
    child.close()   # ours: so that the worker's death reads as end-of-file
    what = model or "the embedded model"
    if not _wait(conn, process, start_timeout):
        process.kill()
        raise ModelLoadError(f"the model worker loading {what} did not start within "
                             f"{start_timeout:.0f} s")
    try:
        status, value = conn.recv()
    except EOFError:
        process.join(5)
        raise ModelLoadError(f"the model worker loading {what} exited (code "
                             f"{process.exitcode}) before it was ready; see its log above"
                             ) from None
    if status == "error":
        process.join(5)
        raise _rebuild(value)
    info = value
    tokenizer, encoder = pickle.loads(info.pop("front"))
    backend = WorkerBackend(process, conn, info)
    scorer = Scorer(backend, tokenizer, **info.pop("options"))
    scorer.encoder = encoder   # the worker's own (a seq2seq model's differs)
    return scorer


def _wait(conn: Any, process: Any, timeout: float) -> bool:
    """Wait for the first message; False on timeout (True at end-of-file: recv says so)."""
    waited = 0.0
    while not conn.poll(0.25):
        waited += 0.25
        if not process.is_alive():
            return True
        if waited >= timeout:
            return False
    return True


# -- the worker process --------------------------------------------------------------------------
def _worker_main(conn: Any, model: str | None, options: dict[str, Any]) -> None:
    """Load the model, say ready (with the tokenizer and encoder), then answer calls."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the server decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from ..scorer import Scorer

        scorer = Scorer.from_pretrained(model, **options)
        o = scorer.options
        info = {"max_length": scorer.backend.max_length,
                "vocab_size": scorer.backend.vocab_size,
                "is_encoder_decoder": bool(getattr(scorer.backend, "is_encoder_decoder",
                                                   False)),
                "device": str(getattr(scorer.backend, "device", "cpu")),
                "front": _front(scorer),
                "options": dict(bos=o.bos, score_eos=o.score_eos, whitespace=o.whitespace,
                                truncate=o.truncate, parse_special=o.parse_special,
                                turns=o.turns, end_of_turn=o.end_of_turn,
                                chat_template=o.chat_template,
                                batch_tokens=scorer.batch_tokens)}
    except BaseException as exc:   # the server reports it and exits
        conn.send(("error", _describe(exc)))
        return
    conn.send(("ready", info))
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):   # the server is gone
            return
        if op == "stop":
            conn.send(("ok", None))
            return
        try:
            value = _handle(scorer, op, payload)
        except Exception as exc:   # the request's error, not the worker's end
            conn.send(("error", _describe(exc)))
        else:
            conn.send(("ok", value))


def _front(scorer: Any) -> bytes:
    """The tokenizer and encoder, for the server process."""
    from ..errors import ConfigError

    try:
        return pickle.dumps((scorer.tokenizer, scorer.encoder))
    except Exception as exc:   # a GGUF model's tokenizer is llama.cpp's, inside the model
        raise ConfigError(f"this model's tokenizer ({type(scorer.tokenizer).__name__}) cannot "
                          f"be sent to the server process ({type(exc).__name__}: {exc}); "
                          "serve it in one process (loglik serve --no-worker)") from None


def _handle(scorer: Any, op: str, payload: Any) -> Any:
    if op == "score":
        (rank, entropy, top_k), packed = payload
        results = scorer.run_requests(wire.unpack_requests(packed),
                                      Detail(rank=rank, entropy=entropy, top_k=top_k))
        return wire.pack_results(results)
    if op == "generate":
        from .completions import generate

        ids, req, eos = payload
        return generate(scorer.backend, ids, req, eos)
    raise ValueError(f"unknown worker call {op!r}")


def _describe(exc: BaseException) -> tuple[str, Any]:
    """An exception as something the server can raise again (APIError by its fields)."""
    from .schemas import APIError

    if isinstance(exc, APIError):
        return ("api", (exc.status, exc.message, exc.param, exc.kind, exc.headers))
    try:
        data = pickle.dumps(exc)
        pickle.loads(data)   # some exceptions pickle but cannot be rebuilt
        return ("pickled", data)
    except Exception:
        return ("text", (isinstance(exc, LoglikError), f"{type(exc).__name__}: {exc}"))


def _rebuild(described: tuple[str, Any]) -> BaseException:
    from .schemas import APIError

    kind, value = described
    if kind == "api":
        status, message, param, err_kind, headers = value
        return APIError(status, message, param, kind=err_kind, headers=headers)
    if kind == "pickled":
        return pickle.loads(value)
    ours, text = value   # a LoglikError is the request's (4xx); anything else a bug (500)
    return LoglikError(text) if ours else RuntimeError(f"in the model worker: {text}")
