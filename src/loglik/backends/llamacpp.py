"""llama.cpp backend: GGUF models through llama-cpp-python's low-level batch API.

Why not llama-cpp-python's ``create_completion(echo=True, logprobs=...)``: it needs
``logits_all=True`` (an n_ctx x vocab buffer), sorts the vocabulary in Python per token and
drops the first scored token. Here each decode call asks llama.cpp for logits only at the
positions that predict a target (``llama_batch.logits`` flags), and loglik computes the
log-softmax itself from those raw logits: fp32 logsumexp, fp64 sums, through
:func:`loglik.logprobs.head_logprobs` with an identity head, so rank, entropy, top-k and
greedy flags are the HF backend's code. Memory is O(scored positions x vocab).

Shared contexts: the planner's units (:mod:`loglik.backends.llamacpp_batch`) put a context's
tokens in the KV cache once, in the sequences of every request that follows it, as
llama.cpp's multiple-choice mode does; many requests share one decode call (a unified KV
cache, one sequence per request), and the cache is cleared between calls.

Exact by default: the KV cache is kept in F32 and flash attention is off (llama.cpp's
defaults, an F16 cache and flash attention on CPU, round through F16 and moved logits of the
tiny test Llama by 4e-4 and 1.3e-3, against 1.2e-6 here); ``kv_type="f16"`` halves the
cache's memory and ``flash_attn=True`` turns it on.

    >>> from loglik import Scorer
    >>> scorer = Scorer.from_pretrained("model.gguf")          # doctest: +SKIP
    >>> scorer.score("The capital of France is", " Paris").logprob  # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import BackendError, ConfigError, ModelLoadError, require
from ..logprobs import head_logprobs, split_head_output
from ..types import Detail, Request, TokenResult
from .base import DISTRIBUTIONS, PACKED_ROWS, SHARED_CONTEXT
from .gguf_file import read_gguf_header
from .llamacpp_batch import Layout, Unit, layout, split_units, unit_tokens
from .llamacpp_tokenizer import GGUFTokenizer

log = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 4096   # KV cells are allocated up front: cap the model's trained context
CALL_TOKENS = 512           # tokens per decode call unless a shared context needs more
MAX_SEQUENCES = 256         # requests per decode call (llama.cpp's LLAMA_MAX_SEQ)
_KV_TYPES = {"f32": 0, "f16": 1}   # ggml_type
_INT32_P = ctypes.POINTER(ctypes.c_int32)


def llama_cpp_module() -> Any:
    """``import llama_cpp`` or a MissingExtraError naming ``pip install 'loglik[llamacpp]'``.

    llama.cpp's own log goes to the ``loglik.backends.llamacpp`` logger (debug level), not to
    stderr; the last lines are kept to explain a failed load."""
    lib = require("llama_cpp", extra="llamacpp", feature="scoring GGUF models")
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        def callback(level: int, text: bytes, _user: Any) -> None:
            try:
                line = text.decode("utf-8", errors="replace")
                _LOG_LINES.append((level, line))
                log.debug("llama.cpp: %s", line.rstrip())
            except Exception:   # at interpreter exit (a context freed late): nothing to do
                pass

        _LOG_CALLBACK = lib.llama_log_callback(callback)
        lib.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
    return lib


_LOG_LINES: deque[tuple[int, str]] = deque(maxlen=64)
_LOG_CALLBACK: Any = None


def _last_error() -> str:
    """The first error llama.cpp logged since ``_LOG_LINES`` was cleared, without its prefix
    (``llama_model_load: error loading model: unknown model architecture: 'x'`` ->
    ``unknown model architecture: 'x'``)."""
    for _, text in _LOG_LINES:
        if "error" in text.lower():
            return text.strip().rsplit("error loading model: ", 1)[-1]
    return "llama.cpp gave no reason"


class LlamaCppBackend:
    """Scores token-id requests with a llama.cpp model (``llama_model *``).

    Use :meth:`from_file` for a .gguf path or :meth:`from_llama` for a ``llama_cpp.Llama``.

    Args:
        lib: the ``llama_cpp`` module.
        model: the loaded ``llama_model *``.
        owner: keeps the model alive (a ``Llama``), or None.
        max_length: the longest request in tokens (default: the model's trained context,
            at most :data:`DEFAULT_MAX_LENGTH`); the KV cache holds this many tokens.
        threads: CPU threads for llama.cpp (default: all cores).
        kv_type: ``"f32"`` (exact, default) or ``"f16"`` keys and values in the cache.
        flash_attn: llama.cpp's flash attention (off by default: on CPU it rounds through
            F16 and moves logits by ~1e-3).
        chunk_size: rows of logits reduced at once (default: ~64 MiB).
        dummy_prefix: how a text that starts with a space is tokenized by a SentencePiece
            vocabulary: ``"metaspace"`` (as Hugging Face tokenizers do, the default) or
            ``"always"`` (as llama.cpp does); see :mod:`~loglik.backends.llamacpp_tokenizer`.
        name: the file or object this came from, for messages.
        owns_model: free the model in :meth:`close` (True when :meth:`from_file` loaded it).
    """

    capabilities = frozenset({PACKED_ROWS, SHARED_CONTEXT, DISTRIBUTIONS})
    packing = True    # read by scorers that predate ``capabilities``
    device = "cpu"
    tolerance = 1e-4  # nats per sequence between two exact fp32 paths (shared/DESIGN.md)

    def __init__(self, lib: Any, model: Any, *, owner: Any = None, max_length: int | None = None,
                 threads: int | None = None, kv_type: str = "f32", flash_attn: bool = False,
                 chunk_size: int | None = None, dummy_prefix: str = "metaspace",
                 name: str = "model", owns_model: bool = False) -> None:
        if kv_type not in _KV_TYPES:
            raise ConfigError(f"kv_type must be one of {', '.join(_KV_TYPES)}, got {kv_type!r}")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}; pass the number of CPU "
                              "cores to use")
        self.lib, self.llama_model, self.owner, self.name = lib, model, owner, name
        self.owns_model = owns_model   # free the model on close (loaded by from_file)
        self.chunk_size = chunk_size
        vocab = lib.llama_model_get_vocab(model)
        self.vocab_size = int(lib.llama_vocab_n_tokens(vocab))
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        if max_length is not None and max_length < 2:
            raise ConfigError(f"max_length must be >= 2, got {max_length}")
        self.max_length = max_length or min(self.n_ctx_train or DEFAULT_MAX_LENGTH,
                                            DEFAULT_MAX_LENGTH)
        # llama.cpp reserves an output row per sequence and asserts they fit in a batch
        self.max_sequences = min(MAX_SEQUENCES, int(lib.llama_max_parallel_sequences()),
                                 self.max_length)
        self.threads = threads or os.cpu_count() or 1
        kind = int(lib.llama_vocab_type(vocab))
        self.tokenizer = GGUFTokenizer(lib, vocab, owner=self, space_prefix=(
            kind == lib.LLAMA_VOCAB_TYPE_SPM and self._space_prefix()),
            byte_level=kind == lib.LLAMA_VOCAB_TYPE_BPE, dummy_prefix=dummy_prefix)
        if self._meta("tokenizer.ggml.bos_token_id") is None and not self.tokenizer.adds_bos:
            # llama.cpp's SentencePiece vocabulary defaults BOS to id 1 when the file names
            # none; a tokenizer without BOS (T5-like) has none, and an empty prompt
            # conditions on EOS as with the HF tokenizer
            self.tokenizer.bos_token_id = None
        self.ctx = self._new_context(_KV_TYPES[kv_type], flash_attn)

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, gpu_layers: int = 0,
                  **options: Any) -> LlamaCppBackend:
        """Check the file's header in Python (:mod:`~loglik.backends.gguf_file`), then load."""
        path = os.fspath(path)
        header = read_gguf_header(path)
        lib = llama_cpp_module()
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        params.n_gpu_layers = gpu_layers
        _LOG_LINES.clear()
        model = lib.llama_model_load_from_file(path.encode("utf-8"), params)
        if not model:
            raise ModelLoadError(
                f"{path}: llama.cpp {_version(lib)} cannot load this {header.architecture!r} "
                f"model: {_last_error()}; check that this llama-cpp-python knows the "
                "architecture (pip install -U llama-cpp-python) and that the file is complete")
        return cls(lib, model, name=path, owns_model=True, **options)

    @classmethod
    def from_llama(cls, llama: Any, **options: Any) -> LlamaCppBackend:
        """Score with the model of a ``llama_cpp.Llama`` (its own context is not used: loglik
        makes one with a sequence per request). Its ``n_ctx`` and ``n_threads`` are the
        defaults for ``max_length`` and ``threads``."""
        lib = llama_cpp_module()
        if not isinstance(llama, lib.Llama):
            raise ConfigError(f"from_llama needs a llama_cpp.Llama, got {type(llama).__name__}")
        options.setdefault("max_length", int(llama.n_ctx()))
        options.setdefault("threads", int(llama.context_params.n_threads_batch) or None)
        return cls(lib, llama.model, owner=llama, name=os.fspath(llama.model_path), **options)

    def _meta(self, key: str) -> str | None:
        """The file's metadata value under ``key`` as text, None when absent."""
        buf = ctypes.create_string_buffer(64)
        n = self.lib.llama_model_meta_val_str(self.llama_model, key.encode(), buf, 64)
        return None if n < 0 else buf.value.decode("utf-8", errors="replace")

    def _space_prefix(self) -> bool:
        value = self._meta("tokenizer.ggml.add_space_prefix")
        return value is None or value.lower() != "false"   # SentencePiece default: on

    def _new_context(self, kv_type: int, flash_attn: bool) -> Any:
        lib = self.lib
        p = lib.llama_context_default_params()
        p.n_ctx = p.n_batch = self.max_length
        p.n_ubatch = min(CALL_TOKENS, self.max_length)
        p.n_seq_max = self.max_sequences
        p.n_threads = p.n_threads_batch = self.threads
        p.type_k = p.type_v = kv_type
        p.flash_attn_type = (lib.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn
                             else lib.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        p.no_perf = True
        if hasattr(p, "kv_unified"):
            p.kv_unified = True    # one cache for all sequences: a context shared by many
        _LOG_LINES.clear()
        ctx = lib.llama_init_from_model(self.llama_model, p)
        if not ctx:
            raise ModelLoadError(f"{self.name}: llama.cpp could not make a context of "
                                 f"{self.max_length} tokens: {_last_error()}; pass a smaller "
                                 "max_length")
        return ctx

    def close(self) -> None:
        """Free the context (and the model when this backend loaded it)."""
        if getattr(self, "ctx", None):
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "owns_model", False) and self.llama_model:
            self.lib.llama_model_free(self.llama_model)
            self.llama_model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:   # interpreter shutdown: the library may be gone already
            pass

    # -- protocol ----------------------------------------------------------------------------
    def score(self, requests: Sequence[Request], detail: Detail = Detail()) -> list[TokenResult]:
        units = [(tuple(r.context_ids), [(i, tuple(r.target_ids))])
                 for i, r in enumerate(requests) if r.target_ids]
        self._check(requests)
        results = self._run(units, detail)
        return [results.get(i) or TokenResult.empty(detail) for i in range(len(requests))]

    def score_packed(self, batch: Any, requests: Sequence[Request], detail: Detail = Detail(),
                     batch_tokens: int | None = None) -> dict[int, TokenResult]:
        """Score a :class:`loglik.plan.PackedBatch`: each unit's context once, its members
        branching from it. Rows and padding do not exist here; ``batch_tokens`` caps the
        tokens of one decode call (at most the KV cache, ``max_length``)."""
        units = [(tuple(u.context), [(i, tuple(requests[i].target_ids)) for i in u.members])
                 for row in batch.rows for u in row]
        self._check([requests[i] for _, members in units for i, _ in members])
        return self._run(units, detail, batch_tokens)

    def prepare(self, requests: Sequence[Request]) -> torch.Tensor:
        """``distributions``: the raw fp32 logits (N, V) at every target's predicting position,
        request after request."""
        self._check(requests)
        units = [(tuple(r.context_ids), [(i, tuple(r.target_ids))])
                 for i, r in enumerate(requests) if r.target_ids]
        parts: dict[int, torch.Tensor] = {}
        for lay in self._decoded(units, None):
            logits = self._logits(lay)                                     # (n_out, V)
            rows = torch.from_numpy(lay.rows)
            start = 0
            for key, n in zip(lay.keys, lay.lengths):
                parts[key] = logits[rows[start:start + n]].clone()         # (n, V)
                start += n
        empty = torch.zeros(0, self.vocab_size)
        return torch.cat([parts.get(i, empty) for i in range(len(requests))])  # (N, V)

    def log_distributions(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(rows.float(), dim=-1)                    # (C, V)

    # -- decoding ----------------------------------------------------------------------------
    def _check(self, requests: Sequence[Request]) -> None:
        for i, r in enumerate(requests):
            if r.target_ids and not r.context_ids:
                raise BackendError(f"request {i} has no context tokens to predict from")
            need = len(r.context_ids) + len(r.target_ids) - 1
            if r.target_ids and need > self.max_length:
                raise BackendError(f"request {i} needs {need} tokens but the context is "
                                   f"{self.max_length} (max_length); pass a larger max_length "
                                   f"(the model was trained on {self.n_ctx_train})")
            bad = [t for t in (*r.context_ids, *r.target_ids) if not 0 <= t < self.vocab_size]
            if bad:
                raise BackendError(f"request {i}: token id {bad[0]} is outside the model's "
                                   f"vocabulary of {self.vocab_size}")

    def _run(self, units: list[Unit], detail: Detail, batch_tokens: int | None = None
             ) -> dict[int, TokenResult]:
        results: dict[int, TokenResult] = {}
        for lay in self._decoded(units, batch_tokens):
            logits = self._logits(lay)                                     # (n_out, V)
            out = head_logprobs(torch.from_numpy(lay.rows), torch.from_numpy(lay.targets),
                                lambda idx: logits[idx], vocab_size=self.vocab_size,
                                chunk_size=self.chunk_size, rank=detail.rank,
                                entropy=detail.entropy, top_k=detail.top_k)
            results.update(zip(lay.keys, split_head_output(out, lay.lengths)))
        return results

    def _decoded(self, units: list[Unit], batch_tokens: int | None):
        """Decode group after group; yield each group's layout while its logits are valid."""
        limit = min(max(batch_tokens or self.max_length, 1), self.max_length)
        # Every token of a decode call attends to every KV cell the call has filled so far
        # (one unified cache, other sequences masked): calls of many short sequences cost
        # O(call tokens^2) in attention. Keep calls to one ubatch unless a unit needs more.
        biggest = max((unit_tokens(u) for u in units), default=0)
        limit = min(limit, max(CALL_TOKENS, biggest))
        for group in split_units(units, limit, self.max_sequences):
            lay = layout(group)
            self._clear_cache()
            code = self.lib.llama_decode(self.ctx, self._batch(lay))
            if code != 0:
                raise BackendError(f"{self.name}: llama_decode failed with code {code} on a "
                                   f"batch of {len(lay.tokens)} tokens in {len(lay.keys)} "
                                   "sequences (1: no room in the KV cache; -1: invalid batch)")
            yield lay

    def _batch(self, lay: Layout) -> Any:
        """A ``llama_batch`` pointing into the layout's arrays (kept alive by ``lay``)."""
        b = self.lib.llama_batch()
        b.n_tokens = len(lay.tokens)
        b.token = lay.tokens.ctypes.data_as(_INT32_P)
        b.embd = None
        b.pos = lay.positions.ctypes.data_as(_INT32_P)
        b.n_seq_id = lay.n_seq.ctypes.data_as(_INT32_P)
        stride = lay.seq_ids.shape[1] * lay.seq_ids.itemsize
        lay.seq_ptrs = lay.seq_ids.ctypes.data + stride * np.arange(len(lay.tokens),
                                                                    dtype=np.uintp)
        b.seq_id = ctypes.cast(lay.seq_ptrs.ctypes.data, ctypes.POINTER(_INT32_P))
        b.logits = lay.flags.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        return b

    def _logits(self, lay: Layout) -> torch.Tensor:
        """The decode call's output rows as a (n_out, V) fp32 view of llama.cpp's buffer."""
        ptr = self.lib.llama_get_logits(self.ctx)
        if not ptr:
            raise BackendError(f"{self.name}: llama.cpp returned no logits")
        return torch.from_numpy(np.ctypeslib.as_array(ptr, shape=(lay.n_outputs,
                                                                  self.vocab_size)))

    def _clear_cache(self) -> None:
        self.lib.llama_memory_clear(self.lib.llama_get_memory(self.ctx), False)


def _version(lib: Any) -> str:
    return f"(llama-cpp-python {getattr(lib, '__version__', '?')})"


# -- entry points used by Scorer ---------------------------------------------------------------
def scorer_from_gguf(scorer_cls: Any, path: str, *, dtype: str | None = "float32",
                     device: str = "cpu", revision: str | None = None, adapter: str | None = None,
                     chunk_size: int | None = None, max_length: int | None = None,
                     threads: int | None = None, kv_type: str = "f32",
                     flash_attn: bool = False, **options: Any) -> Any:
    """``Scorer.from_pretrained("model.gguf")``: the file's weights, tokenizer and context."""
    if dtype not in (None, "auto", "float32", "fp32"):
        raise ConfigError(f"dtype={dtype!r} does not apply to a GGUF file, whose tensors keep the "
                          "type they were written in (F32, F16, Q8_0...); drop --dtype")
    if revision is not None:
        raise ConfigError("revision applies to hub models; a .gguf model is a local file")
    if adapter is not None:
        raise ConfigError("a LoRA adapter applies to a Hugging Face model; merge it before "
                          "converting to GGUF")
    if device not in ("cpu", "gpu", "cuda") and not str(device).startswith("cuda"):
        raise ConfigError(f"device={device!r}: a GGUF model runs on 'cpu' or 'cuda' (all layers "
                          "offloaded, if this llama-cpp-python was built with GPU support)")
    backend = LlamaCppBackend.from_file(path, gpu_layers=0 if device == "cpu" else -1,
                                        max_length=max_length, threads=threads,
                                        kv_type=kv_type, flash_attn=flash_attn,
                                        chunk_size=chunk_size)
    backend.tokenizer.parse_special = bool(options.get("parse_special", False))
    return scorer_cls(backend, backend.tokenizer, **options)


def scorer_from_llama(scorer_cls: Any, llama: Any, *, max_length: int | None = None,
                      threads: int | None = None, kv_type: str = "f32",
                      flash_attn: bool = False, chunk_size: int | None = None,
                      **options: Any) -> Any:
    """``Scorer.from_llama(llama_cpp.Llama(...))``."""
    kw = {k: v for k, v in dict(max_length=max_length, threads=threads).items() if v is not None}
    backend = LlamaCppBackend.from_llama(llama, kv_type=kv_type, flash_attn=flash_attn,
                                         chunk_size=chunk_size, **kw)
    backend.tokenizer.parse_special = bool(options.get("parse_special", False))
    return scorer_cls(backend, backend.tokenizer, **options)
