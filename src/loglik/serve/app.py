"""The ASGI app of ``loglik serve`` (Starlette): routes, key check, limits, JSON errors.

Routes::

    POST /v1/completions   OpenAI legacy completions (echo + logprobs, generation)
    POST /v1/score         loglik's own: pairs in, ``loglik score`` records out
    GET  /v1/models        the one served model
    POST /tokenize         text or chat messages to token ids
    GET  /health           liveness (no key needed)
    GET  /metrics          Prometheus text

Every refused request is a 4xx JSON error ``{"error": {"message", "type", "param", "code"}}``;
an unexpected failure is a 500 with a one-line message, never a traceback.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from ..errors import LoglikError, require
from ..types import Detail, Encoded, Example
from .batcher import Batcher, QueueFull
from .completions import (Pieces, apply_stop, build_prompt, choice_logprobs, completion_body,
                          detail_for, generate, prompt_logprobs, to_request)
from .config import ServeConfig
from .metrics import Metrics
from .schemas import APIError, CompletionRequest, ScoreRequest, parse_tokenize
from .worker import WorkerBackend, WorkerDied

log = logging.getLogger("loglik.serve")


class Server:
    """The state behind the routes: one scorer, its batcher and metrics.

    With a model worker (:func:`loglik.serve.worker.start_worker`) the scorer's backend is a
    :class:`WorkerBackend`: batches and generation go to the worker process, everything else
    (tokenizer, encoder, records) stays here.
    """

    def __init__(self, scorer: Any, config: ServeConfig, model_name: str) -> None:
        self.scorer = scorer
        self.config = config
        self.model_name = model_name
        self.metrics = Metrics()
        self.batcher: Batcher | None = None
        self.pieces = Pieces(scorer.tokenizer)
        self.max_length = scorer.backend.max_length
        self.vocab_size = len(scorer.tokenizer)
        backend = scorer.backend
        self.worker = backend if isinstance(backend, WorkerBackend) else None

    def start(self) -> None:
        self.batcher = Batcher(self.scorer, wait_ms=self.config.batch_wait_ms,
                               max_tokens=self.config.batch_max_tokens,
                               max_queue=self.config.max_queue, metrics=self.metrics,
                               run=self.worker.run_requests if self.worker else None,
                               in_flight=self.config.batches_in_flight if self.worker else 1)

    def generate(self, ids: list[int], req: CompletionRequest, eos: int | None) -> list[int]:
        """On the model thread: new ids from the model (in the worker, if there is one)."""
        if self.worker is not None:
            return self.worker.generate(ids, req, eos)
        return generate(self.scorer.backend, ids, req, eos)

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()

    # -- routes ----------------------------------------------------------------------------
    async def completions(self, body: Any) -> dict[str, Any]:
        req = CompletionRequest.parse(body, self.config, self.vocab_size)
        self._check_model(body)
        if getattr(self.scorer.backend, "is_encoder_decoder", False):
            # echo scores the prompt as one token stream, each token after the ones before
            # it; an encoder-decoder model has no such stream (two sides, no boundary)
            raise APIError(422, f"prompt: {self.model_name} is an encoder-decoder model (T5, "
                           "BART): /v1/completions scores and extends the prompt as one token "
                           "stream, which such a model does not define (the prompt goes "
                           "through the encoder, the response through the decoder); send "
                           "prompt/response pairs to /v1/score", "prompt")
        prompts = [build_prompt(self.scorer, p) for p in req.prompts]
        total = sum(len(p.ids) + req.max_tokens for p in prompts)
        if total > self.config.max_request_tokens:
            raise APIError(413, f"prompt: {total} tokens (prompts plus max_tokens) exceed this "
                           f"server's limit of {self.config.max_request_tokens} per request; "
                           "send fewer or shorter prompts", "prompt")
        for i, p in enumerate(prompts):
            if self.max_length is not None and len(p.ids) + req.max_tokens > self.max_length:
                raise APIError(422, f"prompt[{i}]: {len(p.ids)} tokens plus max_tokens="
                               f"{req.max_tokens} exceed the model's context of "
                               f"{self.max_length}", "prompt")
        generated: list[list[int]] = [[] for _ in prompts]
        texts = [""] * len(prompts)
        reasons = ["length"] * len(prompts)
        if req.max_tokens > 0:
            eos = self.scorer.tokenizer.eos_token_id
            for i, p in enumerate(prompts):
                new = await self.batcher.call(   # type: ignore[union-attr]
                    lambda ids=p.ids: self.generate(ids, req, eos))
                # EOS ends it: not in the text, but in the tokens and log-probs (as vLLM
                # does), so an echo with max_tokens=1 always has one entry past the prompt
                # (lm-eval's local-completions drops the last entry as the generated one).
                stopped = bool(new) and new[-1] == eos
                new, texts[i], hit = apply_stop(self.scorer.tokenizer,
                                                new[:-1] if stopped else new, req.stop)
                generated[i] = new + [eos] if stopped and not hit else new
                reasons[i] = "stop" if (stopped or hit) else "length"
            self.metrics.generated(sum(map(len, generated)))
        full = [p.ids + g for p, g in zip(prompts, generated)]
        want = req.logprobs is not None or req.prompt_logprobs is not None
        results = (await self.batcher.score([to_request(ids) for ids in full],   # type: ignore
                                            detail_for(req)) if want else [None] * len(full))
        piece = (lambda t: f"token_id:{t}") if req.tokens_as_ids else self.pieces
        choices = []
        for i, (p, ids, res) in enumerate(zip(prompts, full, results)):
            text = (p.text if req.echo else "") + texts[i]
            choice: dict[str, Any] = {"index": i, "text": text, "logprobs": None,
                                      "finish_reason": reasons[i]}
            if req.logprobs is not None:
                gen = [len(self.scorer.tokenizer.decode(generated[i][:j]))
                       for j in range(len(generated[i]))]                # within the new text
                offsets = (p.offsets + [len(p.text) + o for o in gen] if req.echo
                           else [0] * len(p.ids) + gen)
                choice["logprobs"] = choice_logprobs(ids, offsets, res,
                                                     0 if req.echo else len(p.ids), piece,
                                                     top=True)
            if req.prompt_logprobs is not None:
                choice["prompt_logprobs"] = prompt_logprobs(p.ids, res, piece)
            choices.append(choice)
        return completion_body(self.model_name, choices, sum(len(p.ids) for p in prompts),
                               sum(map(len, generated)))

    async def score(self, body: Any) -> list[dict[str, Any]]:
        req = ScoreRequest.parse(body, self.config)
        examples = [Example(p, r, id=i, source=None, line=n + 1)
                    for n, (p, r, i) in enumerate(req.pairs)]
        limit = self.config.max_request_tokens

        def check(encoded: list[Encoded]) -> None:   # on the batcher's tokenizer thread
            total = sum(len(e.context_ids) + len(e.response_ids) for e in encoded)
            if total > limit:
                raise APIError(413, f"pairs: {total} tokens exceed this server's limit of "
                               f"{limit} per request; send fewer pairs", "pairs")

        detail = Detail(rank=req.rank, entropy=req.entropy, top_k=req.top_k)
        # Tokenized off the event loop, with the other requests waiting (batcher.py).
        encoded, results = await self.batcher.score_examples(   # type: ignore[union-attr]
            examples, detail, check=check)
        return [self.scorer.to_score(e, r, ex.id).to_record()   # the `loglik score` record
                for e, r, ex in zip(encoded, results, examples)]

    async def tokenize(self, body: Any) -> dict[str, Any]:
        text, messages, special = parse_tokenize(body)
        if messages is not None:
            hf = getattr(self.scorer.tokenizer, "hf", None)
            if hf is None or not getattr(hf, "chat_template", None):
                raise APIError(422, "messages: this model's tokenizer has no chat template; "
                               "send \"prompt\" text instead", "messages")
            ids = list(hf.apply_chat_template(messages, tokenize=True))
        else:
            ids = build_prompt(self.scorer, text).ids if special else (
                self.scorer.tokenizer.encode_batch([text])[0] if text else [])
        return {"tokens": ids, "count": len(ids), "max_model_len": self.max_length}

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": 0, "owned_by": "loglik",
            "max_model_len": self.max_length}]}

    def _check_model(self, body: dict[str, Any]) -> None:
        name = body.get("model")
        if name is not None and name != self.model_name:
            raise APIError(404, f"model: {name!r} is not served here; this server serves "
                           f"{self.model_name!r} (see GET /v1/models)", "model",
                           kind="model_not_found")


def create_app(scorer: Any, config: ServeConfig | None = None, *,
               model_name: str = "loglik") -> Any:
    """The Starlette app serving ``scorer`` (a :class:`loglik.Scorer`).

    Example:
        >>> app = create_app(Scorer.from_pretrained("gpt2"), model_name="gpt2")  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)                          # doctest: +SKIP
    """
    require("starlette", extra="serve", feature="loglik serve")
    from starlette.applications import Starlette
    from starlette.requests import Request as HTTPRequest
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    config = config or ServeConfig()
    server = Server(scorer, config, model_name)

    def error(exc: APIError) -> Response:
        return JSONResponse(exc.to_json(), status_code=exc.status, headers=exc.headers)

    async def read_json(request: HTTPRequest) -> Any:
        size = request.headers.get("content-length")
        limit = config.max_body_bytes
        if size is not None and size.isdigit() and int(size) > limit:
            raise APIError(413, f"body: {size} bytes exceed this server's limit of {limit}",
                           "body")
        chunks, got = [], 0
        async for chunk in request.stream():
            got += len(chunk)
            if got > limit:
                raise APIError(413, f"body: more than {limit} bytes (this server's limit)",
                               "body")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise APIError(400, f"body: not valid JSON ({exc})", "body") from None

    def route(name: str, fn: Callable[[HTTPRequest], Awaitable[Any]], *, auth: bool = True
              ) -> Callable[[HTTPRequest], Awaitable[Response]]:
        async def endpoint(request: HTTPRequest) -> Response:
            start = time.perf_counter()
            try:
                if auth and config.api_key is not None:
                    _check_key(request.headers.get("authorization", ""), config.api_key)
                out = await fn(request)
                response = out if isinstance(out, Response) else JSONResponse(out)
            except APIError as exc:
                response = error(exc)
            except QueueFull as exc:
                response = error(APIError(
                    503, f"server busy: {exc}; retry after {config.retry_after_s} s",
                    kind="server_busy", headers={"Retry-After": str(config.retry_after_s)}))
            except WorkerDied as exc:   # logged once where it was found (worker.py)
                response = error(APIError(503, str(exc), kind="worker_died"))
            except LoglikError as exc:   # a record the tokenizer or context refuses
                response = error(APIError(422, str(exc), getattr(exc, "field", None)))
            except Exception as exc:   # a bug: say so in one line, log the traceback
                log.exception("%s failed", name)
                response = error(APIError(500, f"internal error: {type(exc).__name__}: {exc}",
                                          kind="internal_error"))
            server.metrics.request(name, response.status_code, time.perf_counter() - start)
            return response
        return endpoint

    async def completions(request: HTTPRequest) -> Any:
        return await server.completions(await read_json(request))

    async def score(request: HTTPRequest) -> Any:
        return await server.score(await read_json(request))

    async def tokenize(request: HTTPRequest) -> Any:
        return await server.tokenize(await read_json(request))

    async def models(request: HTTPRequest) -> Any:
        return server.models()

    async def health(request: HTTPRequest) -> Any:
        if server.worker is None:
            return {"status": "ok", "model": model_name}
        if not server.worker.alive:
            return JSONResponse({"status": "error", "model": model_name,
                                 "worker_pid": server.worker.pid,
                                 "error": "the model worker process is not running"},
                                status_code=503)
        return {"status": "ok", "model": model_name, "worker_pid": server.worker.pid}

    async def metrics(request: HTTPRequest) -> Any:
        return PlainTextResponse(server.metrics.render(),
                                 media_type="text/plain; version=0.0.4")

    @asynccontextmanager
    async def lifespan(app: Any):
        server.start()
        try:
            yield
        finally:
            server.stop()   # uvicorn has finished the requests in flight

    async def not_found(request: HTTPRequest, exc: Exception) -> Response:
        code = getattr(exc, "status_code", 404)
        return error(APIError(code, f"{request.method} {request.url.path}: "
                              f"{'no such route' if code == 404 else 'method not allowed'}; "
                              "routes: /v1/completions, /v1/score, /v1/models, /tokenize, "
                              "/health, /metrics", kind="not_found"))

    routes = [Route("/v1/completions", route("completions", completions), methods=["POST"]),
              Route("/v1/score", route("score", score), methods=["POST"]),
              Route("/tokenize", route("tokenize", tokenize), methods=["POST"]),
              Route("/v1/models", route("models", models), methods=["GET"]),
              Route("/health", route("health", health, auth=False), methods=["GET"]),
              Route("/metrics", route("metrics", metrics), methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: not_found, 405: not_found})
    app.state.server = server
    return app


def _check_key(header: str, key: str) -> None:
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                             key.encode()):
        raise APIError(401, "authorization: missing or wrong API key; send "
                       "'Authorization: Bearer <key>'", "authorization",
                       kind="authentication_error")
