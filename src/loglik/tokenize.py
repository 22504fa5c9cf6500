"""Text to token ids, owning the BOS and prompt/response boundary rules (shared/DESIGN.md).

Boundary: trailing whitespace of the prompt moves to the front of a non-empty response
(``whitespace="move"``, the usual convention; ``"keep"`` leaves the texts alone). An empty
response stays empty whatever the policy: it scores 0.0 with 0 tokens. The scored text (the
response after the move, ``Encoded.response_text``) is what ``Score.num_bytes`` and
``Score.num_chars`` count: ``("The capital is ", "Paris")`` scores ``" Paris"``, 6 bytes. The prompt
is tokenized alone and together with the response. When the prompt's tokens are a prefix of
the joint tokens, the response tokens are the rest (``boundary="joint"``, canonical). When
the tokenizer merged across the boundary, the context is the prompt's own tokens and the
response is tokenized as a continuation ("split"): the first candidate whose tokens, decoded
after the prompt's, give exactly the prompt's text followed by the response text is used —

1. the response tokenized alone;
2. the response tokenized after an anchor ("\\n", ".", "a") whose own tokens are stripped
   (this removes the dummy prefix space SentencePiece-style tokenizers add).

If no candidate decodes exactly, :class:`~loglik.errors.TokenizationError` is raised: never an
empty or wrong slice in silence.

Where no candidate can be checked because the tokenizer's decode does not reproduce the text
(WordPiece, whitespace-splitting decoders), the error says it is the tokenizer's fault.

Special tokens: ``</s>``, ``<|endoftext|>`` typed in a prompt or response are tokenized as
characters (the tokenizer's ``split_special_tokens``) unless ``parse_special``. Examples given
as token ids (:meth:`Encoder.encode_ids`) skip the boundary rule; conversations are rendered by
:mod:`loglik.chat`.

BOS: ``auto`` adds BOS when the tokenizer itself adds it, ``always`` adds it, ``never`` does
not. BOS is never doubled (a prompt whose tokens already start with BOS gets no second one)
and never scored. An empty prompt conditions on BOS, or EOS where there is no BOS, whatever
the policy: a first token needs something to be predicted from.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from .errors import ConfigError, ContextLengthError, InputError, TokenizationError
from .types import Encoded, Example

BosPolicy = Literal["auto", "always", "never"]
_ANCHORS = ("\n", ".", "a")


class TextTokenizer(Protocol):
    """The little of a tokenizer that loglik uses (see :class:`HFTokenizer`)."""

    bos_token_id: int | None
    eos_token_id: int | None
    adds_bos: bool

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...
    def __len__(self) -> int: ...


def _adds_bos(bos_id: int | None, with_special: list[int], without: list[int]) -> bool:
    """Does encoding with special tokens put BOS in front (a text encoded both ways)?"""
    return (bos_id is not None and len(with_special) > len(without)
            and with_special[0] == bos_id)


class HFTokenizer:
    """Adapter over a Hugging Face tokenizer: batch encoding without special tokens.

    Special-token strings in the text (``</s>``, ``<|endoftext|>``) are ordinary characters
    unless ``parse_special`` (the tokenizer's ``split_special_tokens``): control tokens come
    from the BOS/EOS policy and from chat templates, never from what a user typed.
    """

    def __init__(self, tokenizer: Any, *, parse_special: bool = False) -> None:
        self.hf = tokenizer
        self.parse_special = parse_special
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.adds_bos = _adds_bos(self.bos_token_id,
                                  tokenizer("x", add_special_tokens=True)["input_ids"],
                                  tokenizer("x", add_special_tokens=False)["input_ids"])

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        # verbose=False: no "longer than the maximum sequence length ... indexing errors"
        # warning. Every caller handles the length itself: the Encoder checks the model's
        # context (error or --truncate left), longtext cuts windows, train_data cuts blocks.
        # split_special_tokens: special-token strings the user typed stay text.
        return self.hf(list(texts), add_special_tokens=False, verbose=False,
                       split_special_tokens=not self.parse_special)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(list(ids))

    def __len__(self) -> int:
        return len(self.hf)

    def decode_batch(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        """:meth:`decode` of each sequence, in one call into the Rust tokenizer."""
        return self.hf.batch_decode([list(s) for s in seqs], skip_special_tokens=False,
                                    clean_up_tokenization_spaces=False)

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` behind a fast tokenizer (None for a slow one)."""
        return getattr(self.hf, "backend_tokenizer", None)

    def with_parse_special(self, parse_special: bool) -> HFTokenizer:
        """This tokenizer, treating special-token strings in text the other way or not."""
        if parse_special == self.parse_special:
            return self
        return HFTokenizer(self.hf, parse_special=parse_special)


class FileTokenizer(HFTokenizer):
    """A ``save_pretrained`` fast tokenizer read by the ``tokenizers`` library alone.

    Encoding and decoding are what transformers' fast tokenizer does with the same
    ``tokenizer.json`` (``tokenizers.Tokenizer.encode_batch`` without special tokens, with
    ``encode_special_tokens`` for special-token strings in text), without importing
    transformers' tokenizer stack (about half of a short default-model command's CPU time
    after torch). ``hf``, the transformers tokenizer, loads the first time something asks for
    it (chat templates, saving). Used for the embedded default model (``tests/test_compact``
    holds it to transformers' tokenizer); :func:`file_tokenizer` says when it applies.
    """

    def __init__(self, folder: str, backend: Any, bos: str | None, eos: str | None, *,
                 parse_special: bool = False) -> None:
        self.folder, self._backend, self._hf = folder, backend, None
        self._special = (bos, eos)
        self.parse_special = parse_special
        self.bos_token_id = backend.token_to_id(bos) if bos is not None else None
        self.eos_token_id = backend.token_to_id(eos) if eos is not None else None
        self.adds_bos = _adds_bos(self.bos_token_id,
                                  backend.encode("x", add_special_tokens=True).ids,
                                  backend.encode("x", add_special_tokens=False).ids)

    @property
    def hf(self) -> Any:   # type: ignore[override]
        if self._hf is None:
            from transformers import PreTrainedTokenizerFast

            self._hf = PreTrainedTokenizerFast.from_pretrained(self.folder)
        return self._hf

    @property
    def backend_tokenizer(self) -> Any:
        return self._backend

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        self._backend.encode_special_tokens = not self.parse_special
        return [e.ids for e in self._backend.encode_batch(list(texts),
                                                          add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=False)

    def decode_batch(self, seqs: Sequence[Sequence[int]]) -> list[str]:
        return self._backend.decode_batch([list(s) for s in seqs], skip_special_tokens=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self._backend.id_to_token(int(i)) for i in ids]

    def __len__(self) -> int:
        return int(self._backend.get_vocab_size(with_added_tokens=True))

    def with_parse_special(self, parse_special: bool) -> HFTokenizer:
        if parse_special == self.parse_special:
            return self
        other = FileTokenizer(self.folder, self._backend, *self._special,
                              parse_special=parse_special)
        other._hf = self._hf
        return other


def file_tokenizer(folder: str) -> FileTokenizer | None:
    """A :class:`FileTokenizer` for a folder whose tokenizer is a plain ``tokenizer.json``
    (transformers' generic fast tokenizer class, string BOS/EOS, no chat template, no extra
    special-token files); None otherwise (load it with transformers)."""
    import json
    import os

    config_file = os.path.join(folder, "tokenizer_config.json")
    tokenizer_file = os.path.join(folder, "tokenizer.json")
    if not (os.path.isfile(config_file) and os.path.isfile(tokenizer_file)):
        return None
    if any(os.path.exists(os.path.join(folder, f)) for f in (
            "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
            "tokenizer.model")):
        return None
    with open(config_file, encoding="utf-8") as f:
        config = json.load(f)
    plain = {"backend", "bos_token", "eos_token", "is_local", "local_files_only",
             "model_max_length", "tokenizer_class"}
    if (set(config) - plain or config.get("tokenizer_class") not in (
            "TokenizersBackend", "PreTrainedTokenizerFast")
            or not all(isinstance(config.get(k), (str, type(None)))
                       for k in ("bos_token", "eos_token"))):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(tokenizer_file)
    bos, eos = config.get("bos_token"), config.get("eos_token")
    if any(t is not None and backend.token_to_id(t) is None for t in (bos, eos)):
        return None
    return FileTokenizer(folder, backend, bos, eos)


def as_text_tokenizer(tokenizer: Any, *, parse_special: bool | None = None) -> TextTokenizer:
    """Wrap a Hugging Face tokenizer; pass through anything that already fits the protocol.

    ``parse_special`` (None: keep what ``tokenizer`` already does, else False) re-wraps an
    :class:`HFTokenizer` that treats special-token strings the other way.
    """
    if isinstance(tokenizer, HFTokenizer):
        if parse_special is None:
            return tokenizer
        return tokenizer.with_parse_special(parse_special)
    if hasattr(tokenizer, "encode_batch") and hasattr(tokenizer, "adds_bos"):
        return tokenizer
    return HFTokenizer(tokenizer, parse_special=bool(parse_special))


@dataclass(frozen=True)
class EncodeOptions:
    """How examples become tokens. Validated on construction."""

    bos: BosPolicy = "auto"
    score_eos: bool = False
    whitespace: Literal["move", "keep"] = "move"
    truncate: Literal["error", "left"] = "error"
    parse_special: bool = False
    turns: Literal["last", "all"] = "last"      # conversations: which assistant turns
    end_of_turn: bool = True                    # conversations: score the end-of-turn tokens
    chat_template: str | None = None            # conversations: Jinja text over the tokenizer's

    def __post_init__(self) -> None:
        if self.turns not in ("last", "all"):
            raise ConfigError(f"turns must be 'last' or 'all', got {self.turns!r}")
        if self.bos not in ("auto", "always", "never"):
            raise ConfigError(f"bos must be 'auto', 'always' or 'never', got {self.bos!r}")
        if self.whitespace not in ("move", "keep"):
            raise ConfigError(f"whitespace must be 'move' or 'keep', got {self.whitespace!r}")
        if self.truncate not in ("error", "left"):
            raise ConfigError(f"truncate must be 'error' or 'left', got {self.truncate!r}")


def _where(ex: Example) -> dict[str, Any]:
    """The record's place, for an error message (TokenizationError takes it like InputError)."""
    return dict(source=ex.source, line=ex.line)


def move_whitespace(prompt: str, response: str) -> tuple[str, str]:
    """Move the prompt's trailing whitespace to the front of a non-empty response.

    An empty response stays empty (and the prompt keeps its whitespace): moving must never
    turn "nothing" into a scored space.

    >>> move_whitespace("The capital of France is ", "Paris")
    ('The capital of France is', ' Paris')
    >>> move_whitespace("x = ", "")
    ('x = ', '')
    """
    if not response:
        return prompt, response
    stripped = prompt.rstrip()
    return stripped, prompt[len(stripped):] + response


class Encoder:
    """Turns examples into :class:`~loglik.types.Encoded` (token ids + boundary decision).

    Args:
        tokenizer: a Hugging Face tokenizer or any :class:`TextTokenizer`.
        options: BOS, EOS, whitespace and truncation policy.
        max_length: the model's context; examples that need more tokens are an error
            (or, with ``truncate="left"``, lose tokens from the left of the prompt).
    """

    def __init__(self, tokenizer: Any, options: EncodeOptions | None = None,
                 max_length: int | None = None) -> None:
        self.options = options or EncodeOptions()
        self.tok = as_text_tokenizer(tokenizer, parse_special=self.options.parse_special)
        self.chat_renderer: Any = None   # loglik.chat.ChatRenderer, made on first use
        self.max_length = max_length
        if self.options.score_eos and self.tok.eos_token_id is None:
            raise ConfigError("score_eos needs an EOS token, and this tokenizer has none")
        if self.options.bos == "always" and self.tok.bos_token_id is None:
            raise ConfigError("bos='always' needs a BOS token, and this tokenizer has none; "
                              "use bos='auto' or 'never'")

    @property
    def add_bos(self) -> bool:
        return self.options.bos == "always" or (self.options.bos == "auto" and self.tok.adds_bos)

    def start_token(self) -> int:
        """The token an empty prompt conditions on: BOS, else EOS."""
        tok = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.eos_token_id
        if tok is None:
            raise ConfigError("an empty prompt conditions on BOS or EOS, and this tokenizer has "
                              "neither; give a non-empty prompt")
        return tok

    def encode(self, prompt: str, response: str) -> Encoded:
        return self.encode_many([Example(prompt, response)])[0]

    def encode_many(self, examples: Sequence[Example]) -> list[Encoded]:
        """Encode a batch of examples with two batched tokenizer calls (plus fallbacks).

        Examples that carry token ids (:meth:`encode_ids`) or a conversation
        (:func:`loglik.chat.encode_chat`) take their own path, in place.
        """
        text = [ex for ex in examples if ex.prompt_ids is None and ex.messages is None]
        pairs = [self._texts(ex) for ex in text]
        prompt_ids = self.tok.encode_batch([p for p, _ in pairs])
        joint_ids = self.tok.encode_batch([p + r for p, r in pairs])
        done = iter([self._finish(ex, p, r, pi, ji)
                     for ex, (p, r), pi, ji in zip(text, pairs, prompt_ids, joint_ids)])
        return [self.encode_ids(ex) if ex.prompt_ids is not None
                else self._encode_chat(ex) if ex.messages is not None
                else next(done) for ex in examples]

    def encode_ids(self, ex: Example) -> Encoded:
        """An example given as token ids: scored as given (``boundary="ids"``).

        No boundary rule and no BOS added (``bos="always"`` adds one unless the ids start
        with it); an empty prompt conditions on BOS (or EOS). The response text, for the
        byte/char counts, is what the response ids add to the prompt ids' decode.
        """
        prompt_ids, response_ids = list(ex.prompt_ids or ()), list(ex.response_ids or ())
        size = len(self.tok)
        for name, ids in (("prompt_ids", prompt_ids), ("response_ids", response_ids)):
            bad = [t for t in ids if t >= size]
            if bad:
                raise InputError(f"token id {bad[0]} is outside the tokenizer's vocabulary "
                                 f"({size} tokens); were these ids made by another tokenizer?",
                                 source=ex.source, line=ex.line, field=name)
        head = self.tok.decode(prompt_ids)
        full = self.tok.decode(prompt_ids + response_ids)
        text = full[len(head):] if full.startswith(head) else self.tok.decode(response_ids)
        bos = self.tok.bos_token_id
        if not prompt_ids:
            context = [self.start_token()]
        elif self.options.bos == "always" and prompt_ids[0] != bos:
            context = [bos, *prompt_ids]
        else:
            context = prompt_ids
        if self.options.score_eos:
            response_ids.append(self.tok.eos_token_id)
        context, dropped = self.fit_context(ex, context, response_ids)
        return Encoded(tuple(context), tuple(response_ids), text, "ids", dropped,
                       self.options.score_eos)

    def _encode_chat(self, ex: Example) -> Encoded:
        from .chat import encode_chat

        return encode_chat(self, ex)

    def _texts(self, ex: Example) -> tuple[str, str]:
        if self.options.whitespace == "move":
            return move_whitespace(ex.prompt, ex.response)
        return ex.prompt, ex.response

    def _finish(self, ex: Example, prompt: str, response: str, prompt_ids: list[int],
                joint_ids: list[int]) -> Encoded:
        n = len(prompt_ids)
        if joint_ids[:n] == prompt_ids:
            boundary, response_ids = "joint", list(joint_ids[n:])
            if response and not response_ids:
                raise TokenizationError(
                    f"the tokenizer gives no tokens for the response {response[:40]!r} after "
                    "the prompt (its pre-tokenizer drops this text): a fault of the "
                    "tokenizer, not of the record; score it with a tokenizer that keeps "
                    "whitespace, or give prompt_ids/response_ids", **_where(ex))
        else:
            boundary, response_ids = "split", self.continuation_ids(prompt, prompt_ids, response,
                                                                ex)
        bos = self.tok.bos_token_id
        if not prompt_ids:
            context = [self.start_token()]
        elif self.add_bos and prompt_ids[0] != bos:
            context = [bos, *prompt_ids]
        else:
            context = list(prompt_ids)
        eos_scored = self.options.score_eos
        if eos_scored:
            response_ids.append(self.tok.eos_token_id)
        context, dropped = self.fit_context(ex, context, response_ids)
        return Encoded(tuple(context), tuple(response_ids), response, boundary, dropped, eos_scored)

    def continuation_ids(self, prompt: str, prompt_ids: list[int], response: str, ex: Example
                        ) -> list[int]:
        if not response:
            return []
        head = self.tok.decode(prompt_ids)
        target = head + response
        candidates = self.tok.encode_batch([response] + [a + response for a in _ANCHORS])
        anchors = self.tok.encode_batch(list(_ANCHORS))
        options = [candidates[0]]
        for a_ids, ar_ids in zip(anchors, candidates[1:]):
            if ar_ids[:len(a_ids)] == a_ids and len(ar_ids) > len(a_ids):
                options.append(ar_ids[len(a_ids):])
        for ids in options:
            if self.tok.decode(prompt_ids + ids) == target:
                return list(ids)
        joint = self.tok.encode_batch([prompt + response])[0]
        if head != prompt or self.tok.decode(joint) != prompt + response:
            raise TokenizationError(
                f"the tokenizer's decode is lossy: the prompt ending {head[-40:]!r} and the "
                f"response {response[:40]!r} tokenize to tokens that decode to different "
                "text (the tokenizer drops or normalises characters), so no response tokens "
                "can be checked against the response text; a fault of the tokenizer, not of "
                "the record: use a tokenizer whose decode round-trips, or give "
                "prompt_ids/response_ids", **_where(ex))
        raise TokenizationError(
            f"cannot tokenize the response {response[:40]!r} as a continuation of the prompt "
            f"ending {head[-40:]!r}: the tokenizer merges across the boundary and no "
            "tokenization of the response alone decodes back to it exactly; try "
            "whitespace='keep' or move the boundary", **_where(ex))

    def fit_context(self, ex: Example, context: list[int], response_ids: list[int]
             ) -> tuple[list[int], int]:
        """Check the model's context; drop prompt tokens from the left when allowed."""
        limit = self.max_length
        # The model reads the context and every response token but the last.
        need = len(context) + max(len(response_ids) - 1, 0)
        if limit is None or need <= limit:
            return context, 0
        keep_bos = 1 if self.add_bos and context and context[0] == self.tok.bos_token_id else 0
        room = limit - max(len(response_ids) - 1, 0) - keep_bos
        where = dict(source=ex.source, line=ex.line, field="response")
        if self.options.truncate == "error" or room < 1:
            why = (f"needs {need} tokens ({len(context)} of context, {len(response_ids)} of "
                   f"response) but the model's context is {limit}")
            fix = ("pass truncate='left' (--truncate left) to drop prompt tokens from the left"
                   if room >= 1 else "the response alone does not fit; shorten it")
            raise ContextLengthError(f"example {why}; {fix}", **where)
        dropped = len(context) - keep_bos - room
        return context[:keep_bos] + context[keep_bos + dropped:], dropped


def token_texts(tok: TextTokenizer, enc: Encoded) -> list[str]:
    """Each response token's piece of the scored text; the pieces concatenate to
    ``enc.response_text`` exactly.

    A token's piece is the characters its bytes complete (``Ġ`` and ``▁`` become the spaces
    they stand for). A token that ends inside a UTF-8 character (byte-level BPE and
    byte-fallback tokens split emoji and CJK characters) completes none: its piece is ``""``
    and the token that completes the character carries all of it. A scored EOS is ``""`` (it
    is not part of the text). Tokenizers whose tokens are not bytes (neither byte-level nor
    ``▁``/byte-fallback) get each token's decoded text after a few tokens of context.

    Example (GPT-2 byte-level BPE; the emoji is split over two tokens)::

        " 🦜 ok" as 'ĠðŁ', '¦', 'ľ', 'Ġok'  ->  [' ', '', '🦜', ' ok']
    """
    import codecs

    text, ids = enc.response_text, list(enc.response_ids)
    scored = ids[:-1] if enc.eos_scored else ids
    tail = [""] if enc.eos_scored else []
    if not scored:
        return tail
    raw = _token_bytes(tok, scored)
    if raw is not None:
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pieces = [decoder.decode(b) for b in raw]
        pieces[-1] += decoder.decode(b"", final=True)
        extra = len("".join(pieces)) - len(text)
        if extra > 0 and pieces[0][:extra].isspace():   # SentencePiece's prefix space on a
            pieces[0] = pieces[0][extra:]               # text that starts the document
        if "".join(pieces) == text:
            return pieces + tail
    return _pieces_by_decoding(tok, list(enc.context_ids), scored, text) + tail


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (char -> byte).

    Built once (it was rebuilt for every scored pair: a visible share of ``loglik serve``'s
    time per request)."""
    keep = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)}
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _token_bytes(tok: TextTokenizer, ids: list[int]) -> list[bytes] | None:
    """The UTF-8 bytes each token stands for, when the tokenizer's tokens are bytes."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        backend = getattr(getattr(tok, "hf", None), "backend_tokenizer", None)
    decoder = str(getattr(backend, "decoder", "")) if backend is not None else ""
    pieces = tok.convert_ids_to_tokens(ids)
    if "ByteLevel" in decoder:
        alphabet = _byte_level_alphabet()
        if not all(c in alphabet for p in pieces for c in p):
            return None
        return [bytes(alphabet[c] for c in p) for p in pieces]
    if "ByteFallback" in decoder or "Metaspace" in decoder:
        return [bytes([int(p[3:5], 16)]) if len(p) == 6 and p.startswith("<0x") and
                p.endswith(">") else p.replace("\u2581", " ").encode("utf-8") for p in pieces]
    return None


#: tokens of left context decoded with each token (spacing rules depend on the neighbour)
_PIECE_CONTEXT = 8


def _pieces_by_decoding(tok: TextTokenizer, context: list[int], scored: list[int],
                        text: str) -> list[str]:
    """Fallback: the text each token adds when decoded after a few tokens of context."""
    seq = context[-_PIECE_CONTEXT:] + scored
    first = len(seq) - len(scored)
    windows = []
    for k in range(first, len(seq)):
        a = max(0, k - _PIECE_CONTEXT)
        windows += [seq[a:k], seq[a:k + 1]]
    decoded = _decode_each(tok, windows)
    pieces, at = [], 0
    for j in range(len(scored)):
        before, after = decoded[2 * j].rstrip("\ufffd"), decoded[2 * j + 1].rstrip("\ufffd")
        end = min(len(text), at + max(0, len(after) - len(before)))
        if j == len(scored) - 1:
            end = len(text)               # whatever the tokenizer's quirks, the pieces add up
        pieces.append(text[at:end])
        at = end
    return pieces


def _decode_each(tok: TextTokenizer, seqs: list[list[int]]) -> list[str]:
    batch = getattr(tok, "decode_batch", None)
    if batch is not None:   # one call into the Rust tokenizer
        return batch(seqs)
    hf = getattr(tok, "hf", None)
    if hf is not None:
        return hf.batch_decode(seqs, skip_special_tokens=False,
                               clean_up_tokenization_spaces=False)
    return [tok.decode(s) for s in seqs]
