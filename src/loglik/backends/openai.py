"""Scoring through any OpenAI-compatible completions server (vLLM, SGLang, llama-cpp-python,
TGI's OpenAI endpoint, ``loglik serve``).

loglik tokenizes (its boundary and BOS rules stay loglik's); this backend sends each request's
``context + targets`` with ``echo`` and ``logprobs`` and reads back the log-probs of the target
tokens. Two ways to send:

* ``mode="ids"`` — the prompt as token ids (vLLM, loglik serve); the server's echoed tokens
  must be the ids sent (checked with ``return_tokens_as_token_ids`` where the server gives it,
  else by count);
* ``mode="text"`` — the decoded text; the server tokenizes it, and its tokens are aligned to
  ours by ``text_offset``: every one of our target tokens must start where one of the
  server's starts, with none in between, or the response is refused.
* ``mode="auto"`` tries ids and falls back to text when the server refuses them.

``max_tokens`` defaults to 1 (llama-cpp-python reads 0 as "unlimited"): the generated token
is ignored. A response that does not match what was sent (count, ids or offsets) is a
:class:`~loglik.errors.BackendError`, never log-probs given to the wrong tokens.

Example:
    >>> scorer = Scorer.from_server("http://127.0.0.1:8000/v1", tokenizer="gpt2")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import BackendError, ConfigError
from ..types import Detail, Request, TokenResult

MODES = ("auto", "ids", "text")


class ServerError(BackendError):
    """The server answered with an HTTP error (``status``) or not at all (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """JSON over HTTP with retries: connection errors, 429 and 5xx back off and try again.

    The bearer key is ``api_key``, else the ``OPENAI_API_KEY`` environment variable, if set.
    """

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 60.0,
                 retries: int = 3, backoff: float = 0.5) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL {base_url!r} must start with http:// or https://")
        if timeout <= 0 or retries < 0:
            raise ConfigError("timeout must be > 0 and retries >= 0")
        self.base = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout, self.retries, self.backoff = timeout, retries, backoff

    def request(self, method: str, path: str, body: Any = None, *,
                retries: int | None = None) -> Any:
        url = f"{self.base}/{path.lstrip('/')}"
        data = None if body is None else json.dumps(body).encode()
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            wait = self.backoff * 2 ** attempt * (1 + random.random() / 2)
            try:
                req = urllib.request.Request(url, data=data, headers=self.headers, method=method)
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                text = exc.read().decode("utf-8", "replace")
                if exc.code in (429, 500, 502, 503, 504) and attempt < retries:
                    after = exc.headers.get("Retry-After", "")
                    time.sleep(float(after) if after.replace(".", "", 1).isdigit() else wait)
                    continue
                raise ServerError(f"{method} {url}: HTTP {exc.code}: {_message(text)}",
                                  exc.code) from None
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                if attempt < retries:
                    time.sleep(wait)
                    continue
                raise ServerError(f"{method} {url}: no answer after {retries + 1} tries "
                                  f"({exc}); is the server up? (--timeout, --concurrency)"
                                  ) from None
            except ValueError as exc:
                raise ServerError(f"{method} {url}: the answer is not JSON ({exc})") from None
        raise AssertionError("unreachable")


def _message(text: str) -> str:
    try:
        err = json.loads(text).get("error", text)
        return str(err.get("message", err) if isinstance(err, dict) else err)[:500]
    except (ValueError, AttributeError):
        return text[:500]


def refuses_ids(exc: ServerError) -> bool:
    """Whether an error answer means "this server takes text prompts only".

    400/422 (vLLM-style validation), or llama-cpp-python 0.3's 500 whose message is its
    pydantic error "Input should be a valid string" for a token-id prompt.
    """
    return exc.status in (400, 422) or (exc.status == 500 and "valid string" in str(exc))


def parse_token_id(token: str) -> int | None:
    """``"token_id:123"`` (vLLM's ``return_tokens_as_token_ids``) -> 123, else None."""
    if isinstance(token, str) and token.startswith("token_id:"):
        rest = token[len("token_id:"):]
        return int(rest) if rest.isdigit() else None
    return None


class OpenAIBackend:
    """The backend protocol over a completions server; no optional capabilities.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:8000/v1``.
        tokenizer: loglik's tokenizer (a :class:`~loglik.tokenize.TextTokenizer`), used only
            to decode ids for ``text`` mode and to check what the server echoes.
        model: the served model name (default: the first of ``GET /models``).
        mode: ``"auto"``, ``"ids"`` or ``"text"`` (see the module docstring).
        concurrency: HTTP requests in flight at once.
        prompts_per_call: prompts sent in one completions request.
        max_tokens: what to ask the server to generate (1: llama-cpp-python reads 0 as
            unlimited); generated tokens are ignored.
        max_length: the model's context, when the server does not say (``max_model_len``).
    """

    capabilities: frozenset[str] = frozenset()

    def __init__(self, url: str, tokenizer: Any, *, model: str | None = None,
                 api_key: str | None = None, mode: str = "auto", concurrency: int = 8,
                 prompts_per_call: int = 8, timeout: float = 60.0, retries: int = 3,
                 max_tokens: int = 1, max_length: int | None = None) -> None:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if concurrency < 1 or prompts_per_call < 1 or max_tokens < 0:
            raise ConfigError("concurrency and prompts_per_call must be >= 1, max_tokens >= 0")
        self.client = Client(url, api_key=api_key, timeout=timeout, retries=retries)
        self.tokenizer = tokenizer
        self.mode = mode
        self.concurrency, self.prompts_per_call, self.max_tokens = (
            concurrency, prompts_per_call, max_tokens)
        self.vocab_size = len(tokenizer)
        self.model, self.max_length = self._describe(model, max_length)
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="loglik-openai")

    def _describe(self, model: str | None, max_length: int | None) -> tuple[str, int | None]:
        try:
            listed = self.client.request("GET", "models").get("data") or []
        except ServerError:
            listed = []
        entry = next((m for m in listed if model is None or m.get("id") == model), None)
        if model is None:
            if entry is None:
                raise ConfigError(f"{self.client.base}/models lists no model; pass the served "
                                  "model name (--served-model)")
            model = entry["id"]
        if max_length is None and entry is not None:
            max_length = entry.get("max_model_len")
        return model, max_length

    # -- the protocol ----------------------------------------------------------------------
    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        if detail.rank or detail.entropy:
            raise BackendError("a completions server returns log-probs and top-k only; rank "
                               "and entropy need the model itself (drop --rank/--entropy)")
        for i, r in enumerate(requests):
            if r.target_ids and not r.context_ids:
                raise BackendError(f"request {i}: targets but no context; nothing predicts "
                                   "the first token")
        todo = [(i, r) for i, r in enumerate(requests) if r.target_ids]
        chunks = [todo[i:i + self.prompts_per_call]
                  for i in range(0, len(todo), self.prompts_per_call)]
        results = [TokenResult.empty(detail) for _ in requests]
        for chunk, out in zip(chunks, self._pool.map(
                lambda c: self._score_chunk([r for _, r in c], detail), chunks)):
            for (i, _), res in zip(chunk, out):
                results[i] = res
        return results

    def _score_chunk(self, requests: Sequence[Request], detail: Detail) -> list[TokenResult]:
        mode = self.mode
        if mode in ("auto", "ids"):
            try:
                out = self._send(requests, detail, "ids")
                if mode == "auto":
                    with self._lock:
                        self.mode = "ids"    # it takes ids: stop asking
                return out
            except ServerError as exc:
                if mode == "ids" or not refuses_ids(exc):
                    raise
                with self._lock:
                    self.mode = "text"   # this server takes text only; stop trying ids
        return self._send(requests, detail, "text")

    def completion(self, prompts: list[Any], *, logprobs: int, max_tokens: int | None = None,
                   temperature: float = 0.0, echo: bool = True, **extra: Any) -> list[dict]:
        """The raw ``choices`` of one completions call, in prompt order.

        A server that refuses a list of prompts (llama-cpp-python 0.3 answers 500) gets them
        one per call, from then on (``prompts_per_call`` becomes 1).
        """
        body = {"model": self.model, "prompt": prompts, "echo": echo, "logprobs": logprobs,
                "max_tokens": self.max_tokens if max_tokens is None else max_tokens,
                "temperature": temperature, "return_tokens_as_token_ids": True, **extra}
        if len(prompts) > 1 and self.prompts_per_call > 1:
            try:
                # No retries: a server that cannot take lists fails the same way each time.
                answer = self.client.request("POST", "completions", body, retries=0)
            except ServerError as exc:
                if exc.status is None or exc.status in (401, 403, 404):
                    raise
                out = [self.completion([p], logprobs=logprobs, max_tokens=max_tokens,
                                       temperature=temperature, echo=echo, **extra)[0]
                       for p in prompts]
                with self._lock:
                    self.prompts_per_call = 1   # it answers single prompts: keep to them
                return [{**c, "index": i} for i, c in enumerate(out)]
            return self._choices(answer, prompts)
        if len(prompts) == 1:
            body["prompt"] = prompts[0]     # one prompt: the flat form every server reads
        # While "auto" has not learnt whether ids are taken, a refusal is not retried.
        answer = self.client.request("POST", "completions", body,
                                     retries=0 if self.mode == "auto" else None)
        return self._choices(answer, prompts)

    @staticmethod
    def _choices(answer: Any, prompts: list[Any]) -> list[dict]:
        choices = answer.get("choices") if isinstance(answer, dict) else None
        if not isinstance(choices, list) or len(choices) != len(prompts):
            raise BackendError(f"the server answered {len(choices or [])} choices for "
                               f"{len(prompts)} prompts")
        return sorted(choices, key=lambda c: c.get("index", 0))

    def _send(self, requests: Sequence[Request], detail: Detail, mode: str
              ) -> list[TokenResult]:
        sent = [list(r.context_ids) + list(r.target_ids) for r in requests]
        k = max(1, detail.top_k)
        if mode == "ids":
            choices = self.completion(sent, logprobs=k)
            picks = [self._align_ids(c, ids, len(r.context_ids))
                     for c, ids, r in zip(choices, sent, requests)]
        else:
            texts = [self._text_of(ids) for ids in sent]
            choices = self.completion([t for t, _ in texts], logprobs=k)
            picks = [self._align_text(c, ids, len(r.context_ids), skip)
                     for c, ids, r, (_, skip) in zip(choices, sent, requests, texts)]
        return [self._result(c, pick, detail)
                for c, pick in zip(choices, picks)]

    # -- alignment -------------------------------------------------------------------------
    def _align_ids(self, choice: dict, sent: list[int], n_context: int) -> list[int]:
        """Indices into the echoed tokens of the targets, after checking the echo."""
        lp = choice.get("logprobs") or {}
        tokens = lp.get("tokens") or []
        n = len(sent)
        if not n <= len(tokens) <= n + self.max_tokens:
            raise BackendError(f"the server echoed {len(tokens)} tokens for {n} sent (plus at "
                               f"most {self.max_tokens} generated): it re-tokenized or dropped "
                               "or added tokens; refusing to assign its log-probs")
        ids = [parse_token_id(t) for t in tokens[:n]]
        if all(i is not None for i in ids) and ids != sent:
            bad = next(j for j, (a, b) in enumerate(zip(ids, sent)) if a != b)
            raise BackendError(f"the server echoed token id {ids[bad]} at position {bad} where "
                               f"{sent[bad]} was sent; refusing to assign its log-probs")
        return list(range(n_context, n))

    def _text_of(self, ids: list[int]) -> tuple[str, int]:
        return text_of(self.tokenizer, ids)

    def _align_text(self, choice: dict, sent: list[int], n_context: int, skip: int
                    ) -> list[int]:
        """Indices into the server's tokens of our target tokens, matched by text offset."""
        picks = align_by_offsets(self.tokenizer, choice, sent, n_context, skip)
        values = (choice.get("logprobs") or {}).get("token_logprobs") or []
        if any(values[j] is None for j in picks):
            raise BackendError("the server gave no log-prob for the first target token "
                               "(llama-cpp-python returns null for the first token of a text "
                               "prompt even after its BOS: give the pair a prompt, or use a "
                               "server that takes token ids)")
        return picks

    def _result(self, choice: dict, picks: list[int], detail: Detail) -> TokenResult:
        lp = choice["logprobs"]
        values, tops = lp.get("token_logprobs") or [], lp.get("top_logprobs") or []
        logprobs, greedy, top = [], [], [] if detail.top_k else None
        for j in picks:
            v = values[j]
            if v is None:
                raise BackendError(f"the server gave no log-prob for echoed token {j}")
            alts = tops[j] if j < len(tops) and tops[j] else {}
            logprobs.append(float(v))
            greedy.append(not alts or float(v) >= max(alts.values()) - 1e-6)
            if top is not None:
                pairs = [(parse_token_id(t), float(a)) for t, a in alts.items()]
                if any(t is None for t, _ in pairs):
                    raise BackendError("top_k needs token ids back (return_tokens_as_token_ids, "
                                       "as vLLM and loglik serve give); this server sends text")
                pairs.sort(key=lambda p: -p[1])
                top.append(pairs[:detail.top_k])   # type: ignore[arg-type]
        return TokenResult(logprobs, greedy, top=top)

    def close(self) -> None:
        self._pool.shutdown(wait=False)


def text_of(tokenizer: Any, ids: list[int]) -> tuple[str, int]:
    """The text to send for ``ids`` and how many leading ids (a BOS) the text leaves out."""
    bos = tokenizer.bos_token_id
    skip = 1 if ids and bos is not None and ids[0] == bos else 0
    return tokenizer.decode(ids[skip:]), skip


def align_by_offsets(tokenizer: Any, choice: dict, sent: list[int], first: int, skip: int
                     ) -> list[int]:
    """Indices into a server's echoed tokens of ``sent[first:]``, matched by ``text_offset``.

    The server tokenized ``decode(sent[skip:])`` itself; each of our tokens must start where
    one of its tokens starts, with none in between, or :class:`BackendError`. A server whose
    first token carries the SentencePiece dummy-prefix space (llama-cpp-python: ``" The"`` at
    offset 0 of ``"The ..."``) counts its offsets in ``" " + text``; they are shifted back by
    one when that is what its first token says.
    """
    end = len(tokenizer.decode(sent[skip:]))
    ours, last = [], 0
    for i in range(first, len(sent)):   # clipped and monotone, as servers report them
        last = max(last, min(len(tokenizer.decode(sent[skip:i])), end))
        ours.append(last)
    lp = choice.get("logprobs") or {}
    offsets = lp.get("text_offset") or []
    values = lp.get("token_logprobs") or []
    tokens = lp.get("tokens") or []
    text = tokenizer.decode(sent[skip:])
    shifts = [0]
    if (tokens and isinstance(tokens[0], str) and tokens[0][:1].isspace()
            and not text[:1].isspace()):
        shifts.append(1)
    inside: list[int] = []
    for shift in shifts:
        at = [max(0, off - shift) for off in offsets]
        picks = [j for j, off in enumerate(at) if ours[0] <= off < end]
        if (len(picks) == len(ours) + 1 and at[picks[0]] == ours[0]
                and _is_null(values, picks[0])):
            picks = picks[1:]            # the server's own BOS, at the same offset
        inside = [at[j] for j in picks]
        if inside == ours:
            return picks
    raise BackendError(f"the server tokenized the text differently: our target tokens "
                       f"start at characters {ours}, its tokens at {inside}; "
                       "use a server that takes token ids, or the model's own tokenizer")


def _is_null(values: list[Any], j: int) -> bool:
    return j < len(values) and values[j] is None


def scorer_from_server(cls: Any, url: str, *, tokenizer: Any, model: str | None = None,
                       api_key: str | None = None, mode: str = "auto", concurrency: int = 8,
                       timeout: float = 60.0, retries: int = 3, max_tokens: int = 1,
                       max_length: int | None = None, batch_tokens: int | None = None,
                       **options: Any) -> Any:
    """``Scorer.from_server``: load the tokenizer (a path or hub id) and wrap the backend."""
    from ..tokenize import as_text_tokenizer

    if tokenizer is None:
        raise ConfigError("scoring through a server needs loglik's tokenizer for the model; "
                          "pass tokenizer= (--tokenizer PATH_OR_ID)")
    if isinstance(tokenizer, str):
        from transformers import AutoTokenizer

        from ..errors import ModelLoadError

        try:
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer {tokenizer!r}: {exc}") from exc
    tok = as_text_tokenizer(tokenizer)
    backend = OpenAIBackend(url, tok, model=model, api_key=api_key, mode=mode,
                            concurrency=concurrency, timeout=timeout, retries=retries,
                            max_tokens=max_tokens, max_length=max_length)
    # A large budget: each backend call fans out over `concurrency` HTTP requests.
    return cls(backend, tok, batch_tokens=batch_tokens or 65536, **options)
