"""What loglik needs of a ``transformers`` causal LM, in one place.

Loading (safetensors only unless asked, remote code only when trusted), the context length,
the model's own logit transform (Gemma 2 soft-capping, Cohere/Granite scaling), the final
hidden states of a forward, the output head, the name of the KV-cache argument, and the
agreement to expect in the model's dtype. Every other module of the HF backend, the
objective, the trainer and the audit read these here, never from the model directly.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import torch

from ...errors import ModelLoadError
from ...logprobs import softcap, tolerance

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}

Transform = Callable[[torch.Tensor], torch.Tensor]


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    """``"float32"``/``"bf16"``/... or a torch dtype -> torch dtype; None/"auto" -> "auto"."""
    if dtype is None or dtype == "auto":
        return "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use one of auto, "
                             + ", ".join(sorted(_DTYPES))) from None


def default_dtype(device: str | torch.device) -> str:
    """The weights' dtype when none is asked for: bfloat16 on CUDA, float32 elsewhere.

    >>> default_dtype("cuda:1"), default_dtype("cpu")
    ('bfloat16', 'float32')
    """
    return "bfloat16" if torch.device(device).type == "cuda" else "float32"


def load_hf(name: str, *, dtype: str | torch.dtype | None = None, device: str = "cpu",
            trust_remote_code: bool = False, allow_pickle: bool = False,
            revision: str | None = None, kind: str = "causal") -> tuple[Any, Any]:
    """Load a causal LM (``kind="causal"``) or an encoder-decoder LM (``"seq2seq"``) and its
    tokenizer from a local folder or a hub id.

    Weights load from safetensors only unless ``allow_pickle``; remote code runs only with
    ``trust_remote_code``. ``dtype=None`` is :func:`default_dtype` of the device (bfloat16
    on CUDA, float32 elsewhere); ``"auto"`` is the checkpoint's own.
    """
    import transformers

    auto = {"causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM"}[kind]
    what = "model" if kind == "causal" else "encoder-decoder model"

    path = os.path.expanduser(name)
    # A hub id is "name" or "org/name"; anything else is meant as a local folder.
    looks_local = (name.startswith((".", "/", "~")) or name.count("/") > 1
                   or os.path.exists(path))
    if looks_local and not os.path.isdir(path):
        raise ModelLoadError(f"model {name!r} not found: no such directory; pass a folder "
                             "written by save_pretrained or a Hugging Face model id")
    kw = dict(trust_remote_code=trust_remote_code, revision=revision)
    tokenizer = load_tokenizer(name, trust_remote_code=trust_remote_code, revision=revision)
    try:
        model = getattr(transformers, auto).from_pretrained(
            path, dtype=resolve_dtype(dtype if dtype is not None else default_dtype(device)),
            use_safetensors=None if allow_pickle else True,
            **kw)
    except Exception as exc:
        hint = ("" if allow_pickle else "; if it only has pickle (.bin) weights and you trust "
                "them, pass allow_pickle=True (--allow-pickle)")
        raise ModelLoadError(f"cannot load {what} {name!r}: {exc}{hint}") from exc
    return model.to(device).eval(), tokenizer


def load_tokenizer(name: str, *, trust_remote_code: bool = False,
                   revision: str | None = None) -> Any:
    """``AutoTokenizer.from_pretrained`` with loglik's error (a folder or a hub id)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(os.path.expanduser(name),
                                             trust_remote_code=trust_remote_code,
                                             revision=revision)
    except Exception as exc:  # transformers raises OSError, ValueError, EnvironmentError...
        raise ModelLoadError(f"cannot load a tokenizer for {name!r}: {exc}") from exc


def context_length(config: Any) -> int | None:
    """The longest input the model's config allows (None when it names none)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def logit_transform(config: Any) -> Transform | None:
    """The model's own post-head logit transform, applied to fp32 logits (None if none)."""
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)            # Cohere: logits * scale
    divide = getattr(config, "logits_scaling", None)         # Granite: logits / scaling
    if not (cap or (scale and scale != 1) or (divide and divide != 1)):
        return None

    def transform(logits: torch.Tensor) -> torch.Tensor:
        if scale and scale != 1:
            logits = logits * scale
        if divide and divide != 1:
            logits = logits / divide
        return softcap(logits, cap)

    return transform


def last_hidden(out: Any) -> torch.Tensor:
    """The final hidden states (B, T, H) of a body's forward output."""
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def cache_kwarg(module: Any) -> str:
    """The name ``module.forward`` takes its KV cache by: transformers 5.2x renamed
    ``past_key_values`` to ``cache`` (a wrapper taking ``**kwargs`` gets the new name)."""
    params = inspect.signature(module.forward).parameters
    return "past_key_values" if "past_key_values" in params and "cache" not in params \
        else "cache"


def out_cache(out: Any) -> Any:
    """The KV cache a forward with ``use_cache=True`` returned, under either name."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else getattr(out, "past_key_values", None)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class ModelAdapter:
    """A causal LM as loglik runs it: body forward, then the head only where it is needed.

    ``fast`` is True when the body's last hidden states and the head (+ transform) reproduce
    ``model(...).logits`` (checked once, :meth:`self_check`); otherwise :meth:`states` gives
    full logits and :attr:`head` is the identity, so callers never branch on it.

    Attributes:
        model, config, device, dtype: the model and its settings.
        vocab_size: rows of the output head.
        tolerance: per-sequence agreement in nats to expect in this dtype.
    """

    def __init__(self, model: Any) -> None:
        self.model = model.eval()
        self.config = model.config
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.head_module = model.get_output_embeddings()
        self.vocab_size = (int(self.head_module.weight.shape[0]) if self.head_module is not None
                           else int(self.config.vocab_size))
        self.body = model.base_model if model.base_model is not model else None
        self.transform = logit_transform(self.config)
        self.tolerance = tolerance(self.dtype)
        self.fast = self.body is not None and self.head_module is not None

    @property
    def head(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], Transform | None]:
        """(head, transform) to turn :meth:`states` rows into logits."""
        if self.fast:
            return self.head_module, self.transform
        return _identity, None

    def full_logits(self, **kw: Any) -> torch.Tensor:
        """``model(**kw).logits`` (B, T, V) without a cache."""
        return self.model(use_cache=False, **kw).logits

    def states(self, **kw: Any) -> torch.Tensor:
        """(B, T, H) final hidden states on the fast path, else (B, T, V) full logits."""
        if self.fast:
            return last_hidden(self.body(use_cache=False, **kw))
        return self.full_logits(**kw)

    def states_with_cache(self, cache: Any, **kw: Any) -> tuple[torch.Tensor, Any]:
        """:meth:`states` of a forward that reads and extends ``cache``; (states, cache)."""
        module = self.body if self.fast else self.model
        out = module(use_cache=True, **{cache_kwarg(module): cache}, **kw)
        states = last_hidden(out) if self.fast else out.logits
        return states, out_cache(out)

    @property
    def compact(self) -> bool:
        """Is this loglik's own plain-Llama module (:mod:`.compact`), not a transformers one?"""
        return bool(getattr(self.model, "is_compact", False))

    def new_cache(self) -> Any:
        """An empty KV cache for :meth:`states_with_cache` (full layers: loglik's masks, not
        the cache, apply any window)."""
        if self.compact:
            from .compact import KVCache

            return KVCache()
        from transformers import DynamicCache

        return DynamicCache()

    def prefix_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]],
                     rows: torch.Tensor) -> Any:
        """A cache whose layer i answers with ``layers[i]``'s keys/values (B, heads, Tc, d)
        at ``rows`` + the new ones.

        Nothing is stored: each layer gathers its rows when it runs and drops them after, so
        a forward holds one layer's copy at a time, not every layer's."""
        if self.compact:
            from .compact import prefix_cache

            return prefix_cache(layers, rows)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        class PrefixLayer(DynamicLayer):
            def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
                super().__init__()
                self.keys, self.values = keys, values             # (B, heads, Tc, d)
                self.device, self.is_initialized = keys.device, True

            def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
                       *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
                return (torch.cat([self.keys[rows], key_states], dim=-2),
                        torch.cat([self.values[rows], value_states], dim=-2))

        cache = DynamicCache()
        cache.layers = [PrefixLayer(k, v) for k, v in layers]
        return cache

    def self_check(self) -> bool:
        """Does body + head (+ transform) reproduce ``model(...).logits``? Sets ``fast``."""
        if not self.fast:
            return False
        n = min(8, self.vocab_size)
        ids = torch.arange(n, device=self.device).unsqueeze(0)              # (1, n)
        mask = torch.ones_like(ids)
        with torch.inference_mode():
            ref = self.full_logits(input_ids=ids, attention_mask=mask).float()   # (1, n, V)
            logits = self.head_module(self.states(input_ids=ids, attention_mask=mask)).float()
            if self.transform is not None:
                logits = self.transform(logits)                             # (1, n, V)
        tol = 1e-3 if self.dtype == torch.float32 else 5e-2
        diff = (ref - logits).abs().max().item() / max(1.0, ref.abs().max().item())
        self.fast = diff <= tol
        self.head_diff = diff
        return self.fast
