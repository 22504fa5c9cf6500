"""The GGUF file's own tokenizer, through llama.cpp, as a :class:`loglik.tokenize.TextTokenizer`.

loglik's boundary, BOS and EOS rules (:mod:`loglik.tokenize`) need only ``encode_batch``
without special tokens, ``decode``, ``convert_ids_to_tokens``, the BOS/EOS ids and whether
the tokenizer adds BOS by itself. This adapter answers them from the vocabulary stored in the
GGUF file (``llama_tokenize`` with ``add_special=False``), so a GGUF model is scored with
exactly the ids llama.cpp would feed it.

Special-token strings typed in user text (``<s>``, ``<|endoftext|>``) are text: they are
tokenized as characters unless ``parse_special=True``.

The dummy prefix: llama.cpp's SentencePiece tokenizer (``tokenizer.ggml.add_space_prefix``)
puts a space before every text, as SentencePiece's ``add_dummy_prefix`` does, so
``" hello"`` becomes ``▁▁hello``. Hugging Face's ``Metaspace`` pre-tokenizer (both
``prepend_scheme="first"`` and ``"always"``, which transformers' Llama tokenizer uses) adds
the ``▁`` only when the text does not already start with one: ``" hello"`` -> ``▁hello``.
The GGUF metadata has one boolean for this, so by default (``dummy_prefix="metaspace"``) this
adapter gives a text that starts with a space to llama.cpp without that space, and llama.cpp's
own prefix stands for it: the same string, hence the same ids, as the HF tokenizer.
``dummy_prefix="always"`` keeps llama.cpp's (and SentencePiece's) behaviour. With
``parse_special=True`` llama.cpp also adds the prefix after every special token in the text,
which ``Metaspace`` does not; that case is left as llama.cpp does it.

``decode`` joins the tokens' pieces as bytes (``llama_token_to_piece``), dropping the first
token's leading space when the vocabulary adds a dummy prefix (SentencePiece), as the
Hugging Face decoders do; it does not "clean up" spaces before punctuation.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

DUMMY_PREFIX = ("metaspace", "always")   # see the module docstring


class GGUFTokenizer:
    """Tokenizes with a llama.cpp vocabulary (``llama_vocab *``).

    Args:
        llama_cpp: the imported ``llama_cpp`` module (low-level bindings).
        vocab: the model's vocabulary pointer (``llama_model_get_vocab``).
        space_prefix: whether the vocabulary adds a dummy space before the text.
        byte_level: whether token strings are GPT-2's byte stand-ins (``Ġ``), i.e. a ``gpt2``
            (BPE) vocabulary; read by :func:`loglik.explain.is_byte_level`.
        parse_special: tokenize special-token strings in the text as the special tokens.
        dummy_prefix: ``"metaspace"`` (a leading space of the text is the prefix, as in
            Hugging Face's Metaspace) or ``"always"`` (llama.cpp's own: one more space).
        owner: any object to keep alive while this tokenizer is used (the model).
    """

    def __init__(self, llama_cpp: Any, vocab: Any, *, space_prefix: bool = False,
                 byte_level: bool = False, parse_special: bool = False,
                 dummy_prefix: str = "metaspace", owner: Any = None) -> None:
        if dummy_prefix not in DUMMY_PREFIX:
            raise ConfigError(f"dummy_prefix must be one of {', '.join(DUMMY_PREFIX)}, got "
                              f"{dummy_prefix!r}")
        self._lib = llama_cpp
        self._vocab = vocab
        self._owner = owner
        self.space_prefix = space_prefix
        self.dummy_prefix = dummy_prefix
        self._space_ids: list[int] | None = None
        self.byte_level = byte_level
        self.parse_special = parse_special
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        self.bos_token_id = self._token_or_none(llama_cpp.llama_vocab_bos(vocab))
        self.eos_token_id = self._token_or_none(llama_cpp.llama_vocab_eos(vocab))
        self.adds_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab)) and (
            self.bos_token_id is not None)
        self._pieces: dict[int, bytes] = {}
        self._buffer = (llama_cpp.llama_token * 256)()

    def _token_or_none(self, token: int) -> int | None:
        return None if token is None or token < 0 or token >= self.n_vocab else int(token)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, no BOS/EOS added (``llama_tokenize``)."""
        return [self._encode(text) for text in texts]

    def _encode(self, text: str) -> list[int]:
        if self.space_prefix and self.dummy_prefix == "metaspace" and text.startswith(" "):
            # llama.cpp adds "▁" before any text; Metaspace adds it only when the text does
            # not start with a space: drop that space and let llama.cpp's prefix stand for it
            text = text[1:]
            if not text:
                return self._lone_space()
        data = text.encode("utf-8")
        need = len(data) + 8            # never more tokens than bytes (+ a prefix space)
        if len(self._buffer) < need:
            self._buffer = (self._lib.llama_token * max(need, 2 * len(self._buffer)))()
        n = self._lib.llama_tokenize(self._vocab, data, len(data), self._buffer,
                                     len(self._buffer), False, self.parse_special)
        if n < 0:   # the buffer was too small after all: -n is the count needed
            self._buffer = (self._lib.llama_token * (-n))()
            n = self._lib.llama_tokenize(self._vocab, data, len(data), self._buffer,
                                         len(self._buffer), False, self.parse_special)
        if n < 0:
            raise ValueError(f"llama.cpp could not tokenize a text of {len(data)} bytes")
        return list(self._buffer[:n])

    def _lone_space(self) -> list[int]:
        """The ids of the text ``" "`` under Metaspace: the ``▁`` token, else its UTF-8 bytes
        (byte fallback ``<0xE2><0x96><0x81>``, as the HF BPE does)."""
        if self._space_ids is None:
            texts = {self._lib.llama_vocab_get_text(self._vocab, t): t
                     for t in range(self.n_vocab)}
            marker = "\u2581".encode()
            if marker in texts:
                self._space_ids = [texts[marker]]
            else:
                self._space_ids = [texts.get(f"<0x{b:02X}>".encode(), 0) for b in marker]
        return list(self._space_ids)

    def piece(self, token: int) -> bytes:
        """The bytes ``token`` stands for (special tokens rendered as their text)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = ctypes.create_string_buffer(64)
            n = self._lib.llama_token_to_piece(self._vocab, token, buf, 64, 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = self._lib.llama_token_to_piece(self._vocab, token, buf, -n, 0, True)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def decode(self, ids: Sequence[int]) -> str:
        data = b"".join(self.piece(int(t)) for t in ids)
        if self.space_prefix and data.startswith(b" "):
            data = data[1:]
        return data.decode("utf-8", errors="replace")

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        """The vocabulary's own token strings (``▁the``, ``Ġthe``, ``<0x0A>``)."""
        out = []
        for t in ids:
            text = self._lib.llama_vocab_get_text(self._vocab, int(t))
            out.append(text.decode("utf-8", errors="replace") if text is not None else "")
        return out

    def fingerprint(self) -> str:
        """Equal for two GGUF tokenizers with the same vocabulary and rules (two quantizations
        of one model), so ``loglik compare`` compares them token by token."""
        h = hashlib.sha256(repr((int(self._lib.llama_vocab_type(self._vocab)), self.n_vocab,
                                 self.bos_token_id, self.eos_token_id, self.adds_bos,
                                 self.space_prefix, self.parse_special,
                                 self.dummy_prefix)).encode())
        for t in range(self.n_vocab):
            h.update(self._lib.llama_vocab_get_text(self._vocab, t) or b"")
            h.update(struct.pack("<fi", self._lib.llama_vocab_get_score(self._vocab, t),
                                 self._lib.llama_vocab_get_attr(self._vocab, t)))
        return h.hexdigest()

    def __len__(self) -> int:
        return self.n_vocab
