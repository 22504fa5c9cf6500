"""GGUF files written from the tiny Hugging Face models and tokenizers of :mod:`loglik.testing`.

Tests of the llama.cpp backend need GGUF files without a model hub: :func:`write_gguf` turns
a ``transformers`` Llama-family model (``llama``, ``mistral``, ``qwen2``) and its tokenizer
into a GGUF file with the ``gguf`` package, with the tensors in F32, F16 or Q8_0::

    >>> from loglik.testing import sentencepiece_tokenizer, tiny_model
    >>> tok = sentencepiece_tokenizer()
    >>> write_gguf(tiny_model("llama", len(tok)), tok, "tiny.gguf")   # doctest: +SKIP

Two tokenizer styles are written so that llama.cpp reads exactly the HF tokenizer's ids:

* SentencePiece style (``▁`` words, dummy prefix, ``<0xNN>`` byte fallback): llama.cpp's
  ``llama`` tokenizer, which merges the adjacent pair whose merged token has the highest
  score; the score of a token is minus the rank of the BPE merge that made it, so merges
  happen in the HF tokenizer's order. ``tokenizer.ggml.add_space_prefix`` is on unless the
  Metaspace's ``prepend_scheme`` is ``"never"``; for a text that starts with a space, see
  :mod:`loglik.backends.llamacpp_tokenizer` (llama.cpp would add a second ``▁``).
* byte-level BPE (GPT-2 style): llama.cpp's ``gpt2`` tokenizer with the HF merges and the
  GPT-2 pre-tokenizer regex (``tokenizer.ggml.pre = "gpt-2"``).

Llama-architecture attention: llama.cpp rotates adjacent pairs of each head's query and key
dimensions, ``transformers`` rotates the first half against the second, so the rows of
``q_proj`` and ``k_proj`` are permuted per head on the way out (:func:`interleave_heads`).
Qwen2 uses the half-rotation in llama.cpp too and is written unpermuted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MissingExtraError

ARCHS = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2"}   # HF model_type -> GGUF
DTYPES = ("f32", "f16", "q8_0")
_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7}                        # llama_ftype
_LAYER_NAMES = {
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
_TOP_NAMES = {"model.embed_tokens": "token_embd", "model.norm": "output_norm",
              "lm_head": "output"}


def interleave_heads(weight: np.ndarray, heads: int) -> np.ndarray:
    """Reorder each head's rows from half-split to interleaved rotary pairs.

    Per head of ``d`` rows, row ``i`` (first half) and row ``i + d/2`` (second half) become
    rows ``2i`` and ``2i + 1``. Shape (heads * d, ...) in and out.

    >>> interleave_heads(np.arange(8), 2).tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    d = weight.shape[0] // heads
    split = weight.reshape(heads, 2, d // 2, *weight.shape[1:])      # (h, 2, d/2, ...)
    return split.swapaxes(1, 2).reshape(weight.shape)               # (h, d/2, 2, ...) flat


def gguf_tensor_name(hf_name: str) -> str:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight``."""
    stem, _, suffix = hf_name.rpartition(".")
    if stem in _TOP_NAMES:
        return f"{_TOP_NAMES[stem]}.{suffix}"
    parts = stem.split(".")
    if parts[:2] == ["model", "layers"] and ".".join(parts[3:]) in _LAYER_NAMES:
        return f"blk.{parts[2]}.{_LAYER_NAMES['.'.join(parts[3:])]}.{suffix}"
    raise ValueError(f"no GGUF name for tensor {hf_name!r}")


def write_gguf(model: Any, tokenizer: Any, path: str | Path, *, dtype: str = "f32",
               context_length: int | None = None) -> Path:
    """Write ``model`` (Llama family) and ``tokenizer`` as one GGUF file; returns the path.

    Args:
        model: a ``transformers`` causal LM whose ``config.model_type`` is in :data:`ARCHS`.
        tokenizer: its ``PreTrainedTokenizerFast`` (SentencePiece-style or byte-level BPE).
        dtype: ``"f32"``, ``"f16"`` or ``"q8_0"`` for the 2-D weights (norms and biases stay
            F32, as llama.cpp's converter writes them; a weight whose rows are not a multiple
            of 32 stays F16 in a Q8_0 file).
        context_length: the context written in the metadata (default: the config's).
    """
    try:
        import gguf
    except ImportError as exc:
        raise MissingExtraError("gguf", "llamacpp", "writing GGUF files") from exc
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    config = model.config
    if config.model_type not in ARCHS:
        raise ValueError(f"cannot write a {config.model_type!r} model as GGUF; supported: "
                         + ", ".join(sorted(ARCHS)))
    arch = ARCHS[config.model_type]
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch)
    _write_hparams(writer, config, context_length, _FILE_TYPE[dtype])
    _write_vocab(writer, tokenizer, gguf)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue   # llama.cpp reads the tied head from token_embd
        data = tensor.detach().to("cpu").float().numpy()
        if arch == "llama" and ".q_proj." in name:
            data = interleave_heads(data, heads)
        elif arch == "llama" and ".k_proj." in name:
            data = interleave_heads(data, kv_heads)
        _add_tensor(writer, gguf, gguf_tensor_name(name), data, dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _write_hparams(writer: Any, config: Any, context_length: int | None, ftype: int) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = getattr(config, "rope_parameters", None) or {}
    theta = rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    writer.add_name(f"loglik-tiny-{config.model_type}")
    writer.add_file_type(ftype)
    writer.add_context_length(context_length or config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(theta))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(config.vocab_size)


def _add_tensor(writer: Any, gguf: Any, name: str, data: np.ndarray, dtype: str) -> None:
    if data.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, data.astype(np.float32))
    elif dtype == "q8_0" and data.shape[-1] % 32 == 0:
        qtype = gguf.GGMLQuantizationType.Q8_0
        writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    else:
        writer.add_tensor(name, data.astype(np.float16))


def _write_vocab(writer: Any, tokenizer: Any, gguf: Any) -> None:
    """The tokenizer as llama.cpp metadata: ``llama`` (SentencePiece) or ``gpt2`` (byte BPE)."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    model, pre = spec["model"], spec.get("pre_tokenizer") or {}
    if model.get("type") == "WordLevel":
        _write_word_vocab(writer, tokenizer, gguf)
        return
    if model.get("type") != "BPE":
        raise ValueError(f"cannot write a {model.get('type')!r} tokenizer as GGUF; a BPE "
                         "tokenizer (SentencePiece-style or byte-level) is needed")
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    special = {i for i in tokenizer.all_special_ids}
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    kinds = {pre.get("type")} | {p.get("type") for p in pre.get("pretokenizers", [])}
    T = gguf.TokenType
    types = [T.CONTROL if i in special else T.NORMAL for i in range(len(tokens))]
    if "Metaspace" in kinds:
        made_by = {a + b: rank for rank, (a, b) in enumerate(m.split(" ") for m in merges)}
        scores = []
        for i, text in enumerate(tokens):
            if text == tokenizer.unk_token:
                types[i] = T.UNKNOWN
            elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
                types[i] = T.BYTE
            scores.append(-float(made_by.get(text, 0)))
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores(scores)
        # llama.cpp's one switch for Metaspace's prepend_scheme: "first" and "always" add a
        # "▁" before the text (GGUFTokenizer gives a leading space to it), "never" none
        schemes = {p.get("prepend_scheme") for p in [pre, *pre.get("pretokenizers", [])]
                   if p.get("type") == "Metaspace"}
        writer.add_add_space_prefix(schemes != {"never"})
        if tokenizer.unk_token_id is not None:
            writer.add_unk_token_id(tokenizer.unk_token_id)
    elif "ByteLevel" in kinds:
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("gpt-2")
        writer.add_token_merges(merges)
    else:
        raise ValueError(f"cannot write a tokenizer with pre-tokenizer {sorted(map(str, kinds))} "
                         "as GGUF; use a Metaspace (SentencePiece-style) or ByteLevel one")
    writer.add_token_list(tokens)
    writer.add_token_types([int(t) for t in types])
    adds_bos = tokenizer("x")["input_ids"][:1] == [tokenizer.bos_token_id]
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(bool(adds_bos and tokenizer.bos_token_id is not None))
    writer.add_add_eos_token(False)


def _write_word_vocab(writer: Any, tokenizer: Any, gguf: Any) -> None:
    """A word-level vocabulary (the benchmark's), written so that llama.cpp loads the file.

    llama.cpp has no word-level tokenizer: the file's ids are the HF tokenizer's, but its own
    tokenization of text is not. Score such a file with the HF tokenizer,
    ``Scorer(LlamaCppBackend.from_file(path), hf_tokenizer)``.
    """
    vocab = tokenizer.get_vocab()
    tokens = [""] * len(vocab)
    for text, i in vocab.items():
        tokens[i] = text
    special = set(tokenizer.all_special_ids)
    T = gguf.TokenType
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types([int(T.CONTROL if i in special else T.NORMAL)
                            for i in range(len(tokens))])
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.eos_token_id is not None:
        writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
