"""Hugging Face ``transformers`` backend: the default, and the reference for exactness.

Modules, each depending only on those above it:

* :mod:`.adapter` — load a model, its context length, logit transform, hidden states, head,
  KV-cache argument and dtype tolerance;
* :mod:`.rows` — plain right-padded rows, the head at predicting positions;
* :mod:`.packed` — packed and tree rows under a custom 4D mask;
* :mod:`.kv` — shared contexts by reusing the context's keys and values;
* :mod:`.varlen` — packed rows as variable-length attention segments (no dense mask);
* :mod:`.backend` — :class:`HFBackend`, which checks each path at load and declares what holds;
* :mod:`.compact` — a plain-Llama module in torch alone, for the default model's start-up.
"""

from __future__ import annotations

from .adapter import (ModelAdapter, cache_kwarg, context_length, default_dtype, last_hidden,
                      load_hf, load_tokenizer, logit_transform, out_cache, resolve_dtype)
from .backend import HFBackend
from .rows import split_head_output

__all__ = sorted(["HFBackend", "ModelAdapter", "cache_kwarg", "context_length", "default_dtype",
                  "last_hidden", "load_hf", "load_tokenizer", "logit_transform", "out_cache",
                  "resolve_dtype",
                  "split_head_output"])
