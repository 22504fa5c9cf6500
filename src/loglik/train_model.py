"""The model to train: a folder or hub id, a config to pre-train from, or a model object.

A causal LM (``AutoModelForCausalLM``), or an encoder-decoder LM (``AutoModelForSeq2SeqLM``:
T5, BART) where the config says ``is_encoder_decoder``; both load as the scorer loads them.

Weights are loaded in fp32 (autocast gives bf16 compute); a config builds a randomly
initialised model (from the seed set before the call) whose vocabulary must hold the
tokenizer's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelLoadError


def load_model(model: Any, *, tokenizer: Any = None, device: str = "cpu",
               trust_remote_code: bool = False, allow_pickle: bool = False,
               revision: str | None = None) -> tuple[Any, Any]:
    """A trainable fp32 model and its tokenizer, from a folder/id, a config, or objects."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    from .backends.hf import load_hf
    from .backends.seq2seq import is_encoder_decoder

    tok = tokenizer
    if tok is not None and isinstance(tok, (str, os.PathLike)):
        try:
            tok = AutoTokenizer.from_pretrained(str(tok), trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer {tokenizer!r}: {exc}") from exc
    if not isinstance(model, (str, os.PathLike)):
        if tok is None:
            raise ConfigError("a model object needs its tokenizer: pass tokenizer=...")
        return model.to(device), tok
    path = Path(os.path.expanduser(str(model)))
    if _is_config(path):
        config_file = path if path.is_file() else path / "config.json"
        if tok is None:
            if not (config_file.parent / "tokenizer_config.json").exists():
                raise ConfigError(f"{model} is a model config with no tokenizer beside it; "
                                  "pass --tokenizer PATH (a tokenizer folder)")
            tok = AutoTokenizer.from_pretrained(str(config_file.parent))
        try:
            config = AutoConfig.from_pretrained(str(config_file))
            auto = (AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False)
                    else AutoModelForCausalLM)
            net = auto.from_config(config, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot build a language model from the config "
                                 f"{config_file}: {exc}") from exc
        vocab = net.get_input_embeddings().weight.shape[0]
        if len(tok) > vocab:
            raise ConfigError(f"the tokenizer has {len(tok)} tokens but the config's "
                              f"vocab_size is {vocab}; set vocab_size >= {len(tok)} in "
                              f"{config_file}")
        return net.to(device), tok
    seq2seq = is_encoder_decoder(str(model), revision=revision,
                                 trust_remote_code=trust_remote_code)
    net, loaded_tok = load_hf(str(model), dtype="float32", device=device,
                              trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              revision=revision, kind="seq2seq" if seq2seq else "causal")
    return net, tok if tok is not None else loaded_tok


def _is_config(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".json"
    if not (path / "config.json").exists():
        return False
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    return not weights
