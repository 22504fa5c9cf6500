"""A plain-Llama causal LM in torch alone: the embedded default model without transformers'
import cost.

``transformers`` spends most of a short command's start-up importing its model machinery
(torch's compiler, distributed tensors, scipy, sympy: about two thirds of the ~12 s that
``loglik score examples/pairs.jsonl`` took on an idle 2-core machine); the default model is a
1.9M-parameter ``LlamaForCausalLM``. This module runs exactly that architecture -- RMSNorm,
rotary positions, grouped-query SDPA attention, SiLU-gated MLP, tied or untied head -- from
the same ``config.json`` and ``model.safetensors``, with the call signature the HF backend
uses (``input_ids``, ``attention_mask`` 2D or additive 4D, ``position_ids``,
``past_key_values`` + ``use_cache``), so :class:`~.backend.HFBackend` and its self-checks run
on it unchanged. ``tests/test_compact.py`` holds it to ``LlamaForCausalLM`` on the same
weights and to the float64 reference.

It is used for ``Scorer.from_pretrained()`` with no model named (:func:`load_compact`; the
tokenizer then is :class:`loglik.tokenize.FileTokenizer`); a config it does not cover
exactly (:func:`supported`) loads through transformers instead.
It has no ``generate`` and declares no ``torch_model`` capability: the commands that need
transformers' own model (``audit``'s model checks, ``serve``'s generation, ``train``) load
the default model's folder through transformers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ...masks import additive_mask
from .adapter import resolve_dtype
from .varlen import SegmentPlan, attend

# Config keys whose value changes the arithmetic, and the values this module implements.
_REQUIRED = {"model_type": "llama", "hidden_act": "silu", "attention_bias": False,
             "mlp_bias": False, "pretraining_tp": 1}


def supported(config: dict[str, Any]) -> bool:
    """Does this ``config.json`` describe a model this module computes exactly?"""
    if any(config.get(k, v) != v for k, v in _REQUIRED.items()):
        return False
    rope = config.get("rope_parameters") or {}
    if config.get("rope_scaling") or rope.get("rope_type", "default") != "default":
        return False
    if config.get("partial_rotary_factor", 1.0) != 1.0:
        return False
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return head_dim % 2 == 0


class CompactConfig:
    """The config fields the HF backend reads, from ``config.json`` (missing -> None)."""

    _attn_implementation = "sdpa"

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
        self.head_dim = values.get("head_dim") or (values["hidden_size"]
                                                   // values["num_attention_heads"])
        self.num_key_value_heads = (values.get("num_key_value_heads")
                                    or values["num_attention_heads"])
        rope = values.get("rope_parameters") or {}
        self.rope_theta = float(rope.get("rope_theta", values.get("rope_theta", 10000.0)))

    def __getattr__(self, name: str) -> Any:      # only for names absent from config.json
        if name.startswith("__"):
            raise AttributeError(name)
        return None


@dataclass
class Output:
    """What a forward returns, under the names transformers uses."""

    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    past_key_values: Any = None


class KVLayer:
    """One layer's keys and values (B, kv_heads, T, d), grown by :meth:`update`."""

    def __init__(self) -> None:
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    def update(self, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.keys is None:
            self.keys, self.values = keys, values
        else:
            self.keys = torch.cat([self.keys, keys], dim=-2)
            self.values = torch.cat([self.values, values], dim=-2)  # type: ignore[list-item]
        return self.keys, self.values  # type: ignore[return-value]

    def length(self) -> int:
        return 0 if self.keys is None else int(self.keys.shape[-2])


class PrefixLayer(KVLayer):
    """Rows ``rows`` of stored keys/values, joined with the new ones on each call; nothing
    is kept (see :func:`loglik.backends.hf.kv.score_kv`, step 2)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, rows: torch.Tensor) -> None:
        super().__init__()
        self.keys, self.values, self.rows = keys, values, rows

    def update(self, keys: torch.Tensor, values: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.keys is not None and self.values is not None
        return (torch.cat([self.keys[self.rows], keys], dim=-2),
                torch.cat([self.values[self.rows], values], dim=-2))


class KVCache:
    """Per-layer keys and values; ``layers[i].keys/.values`` as transformers' DynamicCache."""

    def __init__(self, layers: list[KVLayer] | None = None) -> None:
        self.layers: list[KVLayer] = layers or []

    def layer(self, index: int) -> KVLayer:
        while len(self.layers) <= index:
            self.layers.append(KVLayer())
        return self.layers[index]

    def length(self) -> int:
        return self.layers[0].length() if self.layers else 0


def prefix_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor
                 ) -> KVCache:
    """A cache whose layer i answers with ``layers[i]``'s rows ``rows`` + the new keys."""
    return KVCache([PrefixLayer(k, v, rows) for k, v in layers])


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    def __init__(self, c: CompactConfig, index: int) -> None:
        super().__init__()
        self.index, self.heads, self.kv_heads, self.d = (
            index, c.num_attention_heads, c.num_key_value_heads, c.head_dim)
        self.q_proj = nn.Linear(c.hidden_size, self.heads * self.d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv_heads * self.d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv_heads * self.d, bias=False)
        self.o_proj = nn.Linear(self.heads * self.d, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None,
                segments: SegmentPlan | None = None) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, -1, self.d).transpose(1, 2)       # (B, h, T, d)
        k = self.k_proj(x).view(b, t, -1, self.d).transpose(1, 2)       # (B, kv, T, d)
        v = self.v_proj(x).view(b, t, -1, self.d).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)                     # (B, 1, T, d)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        if cache is not None:
            k, v = cache.layer(self.index).update(k, v)                  # (B, kv, Tk, d)
        if segments is not None:                                         # packed units
            out = attend(q, k, v, segments, 1.0 / math.sqrt(self.d))     # (B, T, h, d)
            return self.o_proj(out.reshape(b, t, -1))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0 / math.sqrt(
            self.d), enable_gqa=self.kv_heads != self.heads)             # (B, h, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))


class DecoderLayer(nn.Module):
    def __init__(self, c: CompactConfig, index: int) -> None:
        super().__init__()
        self.self_attn = Attention(c, index)
        self.mlp = MLP(c)
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None, cache: KVCache | None,
                segments: SegmentPlan | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, segments)
        return x + self.mlp(self.post_attention_layernorm(x))


class MLP(nn.Module):
    def __init__(self, c: CompactConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBody(nn.Module):
    """Embeddings, decoder layers and the final norm: ``model.model`` in transformers."""

    def __init__(self, c: CompactConfig) -> None:
        super().__init__()
        self.config = c
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(c, i) for i in range(c.num_hidden_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        # fp32 whatever the weights' dtype, as transformers keeps it (not a buffer, so that
        # .to(dtype) leaves it).
        steps = torch.arange(0, c.head_dim, 2, dtype=torch.int64, device="cpu").float()
        self.inv_freq = 1.0 / (c.rope_theta ** (steps / c.head_dim))        # (d/2,)

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, loglik_segments: SegmentPlan | None = None) -> Output:
        """(B, T) ids -> (B, T, H) final hidden states (and the cache when ``use_cache``).

        ``attention_mask``: None (causal), (B, past + T) 0/1 key padding (causal applied), or
        an additive (B, 1, T, past + T) mask used as given (``{layer type: mask}`` dicts
        take their ``full_attention`` entry: every layer of this model is full attention).
        ``loglik_segments``: packed units attend within themselves (:mod:`.varlen`; the
        mask is then not used)."""
        b, t = input_ids.shape
        cache = (past_key_values if past_key_values is not None else KVCache()) \
            if use_cache else None
        past = cache.length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=input_ids.device).expand(b, t)
        x = self.embed_tokens(input_ids)                                  # (B, T, H)
        inv_freq = self.inv_freq.to(input_ids.device)
        freqs = position_ids[:, :, None].float() * inv_freq               # (B, T, d/2)
        emb = torch.cat((freqs, freqs), dim=-1)                           # (B, T, d)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        mask = (None if loglik_segments is not None
                else _attention_mask(attention_mask, b, t, past, x.dtype, x.device))
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache, loglik_segments)
        return Output(last_hidden_state=self.norm(x), past_key_values=cache)


def _attention_mask(mask: Any, b: int, t: int, past: int, dtype: torch.dtype,
                    device: torch.device) -> torch.Tensor:
    """An additive (B, 1, T, past + T) float mask for SDPA from what the caller gave."""
    if isinstance(mask, dict):
        mask = mask["full_attention"]
    if mask is not None and mask.dim() == 4:
        return additive_mask(mask[:, 0], dtype) if mask.dtype == torch.bool else mask.to(dtype)
    q = torch.arange(past, past + t, device=device)
    k = torch.arange(past + t, device=device)
    ok = (k[None, :] <= q[:, None]).expand(b, t, past + t)              # (B, T, Tk)
    if mask is not None:                                                 # (B, Tk) padding
        ok = ok & mask.bool()[:, None, :]
    return additive_mask(ok, dtype)                                      # (B, 1, T, Tk)


class CompactLlama(nn.Module):
    """``LlamaForCausalLM``'s forward: :class:`LlamaBody` then the output head."""

    is_compact = True

    def __init__(self, c: CompactConfig) -> None:
        super().__init__()
        self.config = c
        self.model = LlamaBody(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings is not False:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def base_model(self) -> LlamaBody:
        return self.model

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def forward(self, input_ids: torch.Tensor, attention_mask: Any = None,
                position_ids: torch.Tensor | None = None, past_key_values: KVCache | None = None,
                use_cache: bool = False, loglik_segments: SegmentPlan | None = None) -> Output:
        """(B, T) ids -> (B, T, V) logits (and the cache when ``use_cache``)."""
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, use_cache,
                         loglik_segments)
        out.logits = self.lm_head(out.last_hidden_state)
        return out


def load_compact(folder: str, *, dtype: str | torch.dtype | None = "float32",
                 device: str = "cpu") -> CompactLlama | None:
    """The model of a ``save_pretrained`` Llama folder with one safetensors file, or None when
    :func:`supported` says no (the caller loads it with transformers). ``dtype`` as
    :func:`~.adapter.resolve_dtype` reads it; "auto" is the config's own."""
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        values = json.load(f)
    weights = os.path.join(folder, "model.safetensors")
    if not supported(values) or not os.path.isfile(weights):
        return None
    from safetensors.torch import load_file

    torch_dtype = resolve_dtype(dtype)
    if torch_dtype == "auto":
        torch_dtype = resolve_dtype(values.get("dtype") or values.get("torch_dtype")
                                   or "float32")
    config = CompactConfig(values)
    model = CompactLlama(config)       # not on the meta device: that imports torch._dynamo
    state = load_file(weights)
    if "lm_head.weight" not in state and config.tie_word_embeddings is not False:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=torch_dtype).eval()
