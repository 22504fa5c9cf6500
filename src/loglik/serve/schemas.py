"""Request bodies of ``loglik serve``, checked field by field.

Every problem is an :class:`APIError` whose JSON names the field (OpenAI's error shape)::

    {"error": {"message": "logprobs: must be an integer in 0..20, got 50",
               "type": "invalid_request_error", "param": "logprobs", "code": 422}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ServeConfig


class APIError(Exception):
    """A request the server refuses: an HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None
                 ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.kind = status, message, param, kind
        self.headers = headers or {}

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param,
                          "code": self.status}}


def _require_object(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise APIError(422, f"{where}: the body must be a JSON object, got "
                       f"{type(body).__name__}")
    return body


def _int(body: dict, name: str, default: int, lo: int, hi: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise APIError(422, f"{name}: must be an integer in {lo}..{hi}, got {value!r}", name)
    return value


def _float(body: dict, name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise APIError(422, f"{name}: must be a number in {lo}..{hi}, got {value!r}", name)
    return float(value)


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise APIError(422, f"{name}: must be true or false, got {value!r}", name)
    return value


def _prompts(value: Any, vocab_size: int) -> list[str | list[int]]:
    """A string, a list of strings, a list of token ids, or a list of lists of ids."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not value:
        raise APIError(422, "prompt: must be a string, a list of strings, a list of token ids "
                       f"or a list of lists of token ids, got {type(value).__name__}"
                       + (" (empty)" if value == [] else ""), "prompt")
    if all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        value = [value]
    out: list[str | list[int]] = []
    for i, p in enumerate(value):
        if isinstance(p, str):
            out.append(p)
            continue
        if not isinstance(p, list) or not p:
            raise APIError(422, f"prompt[{i}]: must be a string or a non-empty list of token "
                           f"ids, got {p!r:.60}", "prompt")
        for j, t in enumerate(p):
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab_size:
                raise APIError(422, f"prompt[{i}][{j}]: token ids must be integers in "
                               f"0..{vocab_size - 1}, got {t!r}", "prompt")
        out.append(list(p))
    return out


@dataclass
class CompletionRequest:
    """``POST /v1/completions`` (the OpenAI legacy contract, as lm-eval and vLLM use it)."""

    prompts: list[str | list[int]]
    max_tokens: int = 16
    echo: bool = False
    logprobs: int | None = None          # top-k alternatives per token; None = no logprobs
    prompt_logprobs: int | None = None   # vLLM: log-probs of the prompt tokens
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    tokens_as_ids: bool = False          # vLLM's return_tokens_as_token_ids

    @classmethod
    def parse(cls, body: Any, config: ServeConfig, vocab_size: int) -> CompletionRequest:
        body = _require_object(body, "/v1/completions")
        if "prompt" not in body:
            raise APIError(422, "prompt: missing (give a string, a list of strings, a list of "
                           "token ids or a list of lists)", "prompt")
        if body.get("stream"):
            raise APIError(422, "stream: streaming is not supported; send stream=false",
                           "stream")
        k = config.max_top_logprobs
        logprobs = body.get("logprobs")
        logprobs = None if logprobs is None else _int(body, "logprobs", 0, 0, k)
        prompt_lp = body.get("prompt_logprobs")
        prompt_lp = None if prompt_lp is None else _int(body, "prompt_logprobs", 0, 0, k)
        stop = body.get("stop") or []
        if isinstance(stop, str):
            stop = [stop]
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise APIError(422, f"stop: must be a string or a list of non-empty strings, got "
                           f"{stop!r:.60}", "stop")
        seed = body.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise APIError(422, f"seed: must be an integer, got {seed!r}", "seed")
        return cls(prompts=_prompts(body["prompt"], vocab_size),
                   max_tokens=_int(body, "max_tokens", 16, 0, config.max_new_tokens),
                   echo=_bool(body, "echo", False), logprobs=logprobs,
                   prompt_logprobs=prompt_lp,
                   temperature=_float(body, "temperature", 1.0, 0.0, 10.0),
                   top_p=_float(body, "top_p", 1.0, 1e-6, 1.0), seed=seed, stop=stop,
                   n=_int(body, "n", 1, 1, 1),
                   tokens_as_ids=_bool(body, "return_tokens_as_token_ids", False))


SCORE_OPTIONS = ("rank", "entropy", "detail", "top_k")


@dataclass
class ScoreRequest:
    """``POST /v1/score``: ``{"pairs": [{"prompt", "response", "id"?}], "options": {...}}``."""

    pairs: list[tuple[str, str, Any]]
    rank: bool = False
    entropy: bool = False
    top_k: int = 0

    @classmethod
    def parse(cls, body: Any, config: ServeConfig) -> ScoreRequest:
        body = _require_object(body, "/v1/score")
        pairs = body.get("pairs")
        if not isinstance(pairs, list) or not pairs:
            raise APIError(422, "pairs: must be a non-empty list of {\"prompt\", \"response\", "
                           "\"id\"?} objects", "pairs")
        out = []
        for i, p in enumerate(pairs):
            if not isinstance(p, dict):
                raise APIError(422, f"pairs[{i}]: must be an object, got {type(p).__name__}",
                               "pairs")
            for name in ("prompt", "response"):
                if not isinstance(p.get(name), str):
                    raise APIError(422, f"pairs[{i}].{name}: missing or not a string (fields "
                                   f"present: {', '.join(sorted(p)) or 'none'})",
                                   f"pairs[{i}].{name}")
            out.append((p["prompt"], p["response"], p.get("id")))
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise APIError(422, "options: must be an object", "options")
        unknown = sorted(set(options) - set(SCORE_OPTIONS))
        if unknown:
            raise APIError(422, f"options: unknown option(s) {', '.join(unknown)}; known: "
                           f"{', '.join(SCORE_OPTIONS)} (encoding options such as bos and "
                           "whitespace are the server's, set at start-up)", "options")
        detail = _bool(options, "detail", False)
        return cls(out, rank=_bool(options, "rank", False) or detail,
                   entropy=_bool(options, "entropy", False) or detail,
                   top_k=_int(options, "top_k", 0, 0, config.max_top_logprobs))


def parse_tokenize(body: Any) -> tuple[str | None, list[dict[str, str]] | None, bool]:
    """``POST /tokenize``: ``{"prompt": str}`` or ``{"messages": [...]}``; ``add_special_tokens``
    (default true) applies the server's BOS policy to text."""
    body = _require_object(body, "/tokenize")
    special = _bool(body, "add_special_tokens", True)
    if "messages" in body:
        msgs = body["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str)
                and isinstance(m.get("content"), str) for m in msgs):
            raise APIError(422, "messages: must be a non-empty list of {\"role\": str, "
                           "\"content\": str}", "messages")
        return None, msgs, special
    text = body.get("prompt", body.get("text"))
    if not isinstance(text, str):
        raise APIError(422, "prompt: missing or not a string (or give \"messages\")", "prompt")
    return text, None, special
