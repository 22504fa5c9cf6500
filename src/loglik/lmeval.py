"""lm-evaluation-harness on loglik: the model ``"loglik"`` for lm-eval 0.4.x.

Importing this module registers :class:`LoglikLM` under the name ``"loglik"`` in lm-eval's
model registry. lm-eval 0.4.13 has no plugin discovery (its names are its own
``MODEL_MAPPING`` plus what the process registered; no entry points are read, and its CLI
imports no user module), so a bare ``lm_eval --model loglik`` fails: ``loglik eval`` does
the import and then runs lm-eval's CLI, or import this module before ``simple_evaluate``::

    import lm_eval, loglik.lmeval
    lm_eval.simple_evaluate(model="loglik", model_args="pretrained=PATH", tasks=[...])
    lm_eval.simple_evaluate(model=loglik.lmeval.LoglikLM(scorer), tasks=[...])

What each request type does:

* ``loglikelihood``: every request of the run goes through one :meth:`Scorer.score_encoded`
  call, so the choices of a question read their context once and batches follow the token
  budget. A request whose context and continuation merge across the boundary gets loglik's
  ``split`` fallback (exact response text) where lm-eval's ``hf`` model slices
  ``tok(context + continuation)[len(tok(context)):]``; the run's log says how many
  (``LoglikLM.boundary_fallbacks``). ``is_greedy`` is loglik's greedy flag.
* ``loglikelihood_rolling``: lm-eval's own window rule by default (its
  ``get_rolling_token_windows`` with one token of context: disjoint chunks of the model's
  context, the last one reading a full window), every window of every document in one
  planned run; with the ``stride`` model arg, :meth:`Scorer.score_text`'s strided windows.
* ``generate_until``: the model's own ``generate`` (greedy unless the task asks to sample),
  stop strings from ``until`` plus EOS, requests sorted by length and batched (left padded).
  Needs a backend with the ``torch_model`` capability (the HF backend).

Encoder-decoder models (T5, BART): ``loglikelihood`` scores the continuation through the
decoder given the context in the encoder (:mod:`loglik.tokenize_seq2seq`; the continuation
without special tokens, so no EOS, as lm-eval's ``hf`` model tokenizes it);
``generate_until`` generates the decoder's target from the context in the encoder;
``loglikelihood_rolling`` is refused (a lone text has no log-probability under such a model).

Agreement with lm-eval's ``hf`` model (tested in tests/test_lmeval.py): the same context
tokens (BOS when the tokenizer adds it, trailing context whitespace moved to the
continuation, BOS else EOS before an empty context) and so the same numbers within 1e-4
nats wherever ``tok(context)`` is a prefix of ``tok(context + continuation)`` (except where
``hf`` groups a request with another of the same tokens and mis-scores it: README). Known
differences: (1) at a merging boundary ``hf`` scores a different token slice (often the wrong
text) and loglik the exact continuation; (2) for a tokenizer that adds BOS (Llama style),
``hf``'s rolling log-likelihood scores that BOS after its BOS prefix and reads the
document after two BOS tokens; loglik reads it after one and never scores BOS; (3) a
request longer than the context is left-truncated by both, but loglik keeps BOS first
(``truncate="left"``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError, require
from .types import Example, Request

require("lm_eval", extra="lmeval", feature="the lm-evaluation-harness model")
# lm-eval fills its registry with its own models only while the registry is empty, so its
# models module must be imported before "loglik" is registered (else "hf" goes missing).
import lm_eval.models  # noqa: E402,F401
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.api.registry import register_model  # noqa: E402

log = logging.getLogger(__name__)

__all__ = ["LoglikLM", "lm_eval_windows"]


def lm_eval_windows(ids: Sequence[int], *, prefix: int, max_length: int) -> list[Request]:
    """lm-eval's rolling windows over a document's tokens ``ids`` (n,), as requests.

    The first window reads ``prefix`` then ``ids[:L-1]`` and scores ``ids[:L]``; each later
    one scores the next ``L`` tokens (the last: what is left) reading the ``L`` tokens before
    each, so every token is scored once (lm-eval ``get_rolling_token_windows`` with
    ``context_len=1``, then ``make_disjoint_window``).

    >>> [(r.context_ids, r.target_ids) for r in lm_eval_windows([1, 2, 3, 4, 5], prefix=0,
    ...                                                           max_length=2)]
    [((0,), (1, 2)), ((2,), (3, 4)), ((3, 4), (5,))]
    """
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    windows = get_rolling_token_windows(token_list=list(ids), prefix_token=prefix,
                                        max_seq_len=max_length, context_len=1)
    return [Request(tuple(ctx), tuple(pred))
            for ctx, pred in map(make_disjoint_window, windows)]


@register_model("loglik")
class LoglikLM(LM):
    """An lm-eval ``LM`` that computes every log-likelihood with a :class:`loglik.Scorer`.

    Args:
        scorer: an existing Scorer (any backend); or None and ``pretrained``.
        pretrained: model folder or hub id, loaded with :meth:`Scorer.from_pretrained`.
        batch_tokens: padded tokens per forward pass (loglik's budget; lm-eval's
            ``batch_size`` is accepted and ignored).
        dtype, device, revision, trust_remote_code, threads: as ``Scorer.from_pretrained``
            (``dtype`` unset: bfloat16 on CUDA, float32 elsewhere).
        max_length: the context in tokens (default: the model's).
        bos: loglik's BOS policy (``auto`` follows the tokenizer, as lm-eval's ``hf`` does).
        truncate: ``left`` (default, as lm-eval) or ``error`` for over-long requests.
        stride: strided windows for ``loglikelihood_rolling`` instead of lm-eval's rule.
        max_gen_toks: default generation length when a task gives none (lm-eval's 256).

    Example:
        >>> lm = LoglikLM(pretrained="path/to/model", batch_tokens=8192)   # doctest: +SKIP
        >>> lm_eval.simple_evaluate(model=lm, tasks=["arc_easy"])           # doctest: +SKIP
    """

    def __init__(self, scorer: Any = None, *, pretrained: str | None = None,
                 batch_tokens: int | str | None = None, dtype: str | None = None,
                 device: str | None = None, revision: str | None = None,
                 trust_remote_code: bool | str = False, threads: int | str | None = None,
                 max_length: int | str | None = None, bos: str = "auto",
                 truncate: str = "left", stride: int | str | None = None,
                 max_gen_toks: int | str = 256, batch_size: Any = None,
                 max_batch_size: Any = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise ConfigError(f"unknown loglik model_args {sorted(unknown)}; known: pretrained, "
                              "batch_tokens, dtype, device, revision, trust_remote_code, threads, "
                              "max_length, bos, truncate, stride, max_gen_toks")
        if (scorer is None) == (pretrained is None):
            raise ConfigError("LoglikLM needs a Scorer or pretrained=PATH_OR_ID (exactly one)")
        if scorer is None:
            from .scorer import Scorer

            scorer = Scorer.from_pretrained(
                pretrained, dtype=dtype, device=_device(device), revision=revision,
                trust_remote_code=_bool(trust_remote_code), threads=_int(threads),
                max_length=_int(max_length), batch_tokens=_int(batch_tokens), bos=bos,
                truncate=truncate, whitespace="move")
        elif scorer.options.whitespace != "move":
            raise ConfigError("LoglikLM needs a Scorer with whitespace='move' (lm-eval's "
                              "convention: trailing context whitespace starts the continuation)")
        self.scorer = scorer
        self.pretrained = pretrained
        self.stride = _int(stride)
        self.max_gen_toks = int(max_gen_toks)
        self._max_length = _int(max_length)
        self._device = getattr(scorer.backend, "device", device)
        self.boundary_fallbacks = 0       # split boundaries in the last loglikelihood call
        self.truncated_requests = 0       # requests that lost context tokens (truncate=left)

    # -- what lm-eval asks of a model ----------------------------------------------------
    @property
    def max_length(self) -> int | None:
        return self._max_length or self.scorer.backend.max_length

    @property
    def hf_tokenizer(self) -> Any:
        """The Hugging Face tokenizer under the scorer (None for other tokenizers)."""
        return getattr(self.scorer.tokenizer, "hf", None)

    @property
    def tokenizer_name(self) -> str:
        tok = self.hf_tokenizer
        return getattr(tok, "name_or_path", "loglik").replace("/", "__")

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The tokenizer's chat template (a named one from a dict of templates), or None."""
        if chat_template is False or chat_template is None:
            return None
        template = getattr(self.hf_tokenizer, "chat_template", None)
        if isinstance(template, dict):
            name = chat_template if isinstance(chat_template, str) else "default"
            if name not in template:
                raise ConfigError(f"chat template {name!r} not found; the tokenizer has "
                                  f"{sorted(template)}")
            return template[name]
        return template

    def apply_chat_template(self, chat_history: list[dict[str, str]],
                            add_generation_prompt: bool = True) -> str:
        """The conversation as one prompt string, by the tokenizer's chat template."""
        tok = self.hf_tokenizer
        if tok is None or getattr(tok, "chat_template", None) is None:
            raise ConfigError("--apply_chat_template needs a tokenizer with a chat template; "
                              "this model's tokenizer has none")
        return tok.apply_chat_template(chat_history, tokenize=False,
                                       add_generation_prompt=add_generation_prompt,
                                       continue_final_message=not add_generation_prompt)

    # -- loglikelihood -------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False
                      ) -> list[tuple[float, bool]]:
        """(log Pr(continuation | context), is_greedy) per request, all in one planned run."""
        if not requests:
            return []
        examples = [Example(ctx, cont, id=i, source="<lm-eval>", line=i + 1)
                    for i, (ctx, cont) in enumerate(r.args for r in requests)]
        encoded = self.scorer.encoder.encode_many(examples)
        scores = self.scorer.score_encoded(encoded, examples)
        self.boundary_fallbacks = sum(s.boundary == "split" for s in scores)
        self.truncated_requests = sum(1 for s in scores if s.truncated_tokens)
        log.info("loglik: %d loglikelihood requests, %d with a merging boundary (split "
                 "fallback), %d left-truncated", len(scores), self.boundary_fallbacks,
                 self.truncated_requests)
        if self.boundary_fallbacks:
            log.warning("loglik: %d of %d requests merge across the context/continuation "
                        "boundary; scored with the split fallback (exact continuation text)",
                        self.boundary_fallbacks, len(scores))
        out = []
        for req, s in zip(requests, scores):
            answer = (s.logprob, all(s.token_greedy))
            self.cache_hook.add_partial("loglikelihood", req.args, answer)
            out.append(answer)
        return out

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False
                              ) -> list[float]:
        """log Pr(document) per request, each token scored once (see the module doc)."""
        texts = [r.args[0] for r in requests]
        if not texts:
            return []
        if getattr(self.scorer.backend, "is_encoder_decoder", False):
            from .longtext import TEXT_SEQ2SEQ

            raise ConfigError(f"loglikelihood_rolling tasks: {TEXT_SEQ2SEQ}")
        if self.stride is not None:
            from .longtext import iter_text_scores

            totals = [s.logprob for s in iter_text_scores(
                self.scorer, texts, stride=self.stride, max_length=self._max_length)]
        else:
            totals = self._rolling_lm_eval(texts)
        for text, total in zip(texts, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return totals

    def _rolling_lm_eval(self, texts: list[str]) -> list[float]:
        import math

        encoder = self.scorer.encoder
        prefix = encoder.start_token()
        limit = self.max_length
        if limit is None:
            raise ConfigError("lm-eval's rolling windows need the model's context length; "
                              "pass max_length=N in model_args")
        per_doc = [lm_eval_windows(ids, prefix=prefix, max_length=limit)
                   for ids in encoder.tok.encode_batch(texts)]
        results = self.scorer.run_requests([w for ws in per_doc for w in ws])
        totals, at = [], 0
        for ws in per_doc:
            totals.append(math.fsum(lp for r in results[at:at + len(ws)] for lp in r.logprobs))
            at += len(ws)
        return totals

    # -- generate_until ------------------------------------------------------------------
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or the task's sampling) continuations, cut at the ``until`` strings."""
        from .lmeval_generate import generate_all

        out = generate_all(self, [r.args for r in requests])
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def get_model_info(self) -> dict[str, Any]:
        """What lm-eval records about the model in its results file."""
        backend = self.scorer.backend
        return {"loglik_backend": type(backend).__name__,
                "loglik_batch_tokens": self.scorer.batch_tokens,
                "loglik_bos": self.scorer.options.bos,
                "max_length": self.max_length}


def _device(device: str | None) -> str:
    """The torch device to load on: lm-eval's CLI asks for cuda by default, and a machine
    without one runs on the CPU (as lm-eval's ``hf`` model does), with a warning."""
    if not device:
        return "cpu"
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            log.warning("loglik: device %r requested but CUDA is not available; using cpu",
                        device)
            return "cpu"
    return device


def _int(value: Any) -> int | None:
    if value is None or value == "" or value == "None":
        return None
    return int(value)


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)
