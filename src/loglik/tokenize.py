"""Text to token ids, owning the BOS and prompt/response boundary rules (shared/DESIGN.md).

Boundary: trailing whitespace of the prompt moves to the front of the response
(``whitespace="move"``, the usual convention; ``"keep"`` leaves the texts alone). The prompt
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
        with_special = tokenizer("x", add_special_tokens=True)["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
        self.adds_bos = (
            self.bos_token_id is not None
            and len(with_special) > len(without)
            and with_special[0] == self.bos_token_id
        )

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.parse_special:
            return self.hf(list(texts), add_special_tokens=False)["input_ids"]
        return self.hf(list(texts), add_special_tokens=False,
                       split_special_tokens=True)["input_ids"]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False,
                              clean_up_tokenization_spaces=False)

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return self.hf.convert_ids_to_tokens(list(ids))

    def __len__(self) -> int:
        return len(self.hf)


def as_text_tokenizer(tokenizer: Any, *, parse_special: bool | None = None) -> TextTokenizer:
    """Wrap a Hugging Face tokenizer; pass through anything that already fits the protocol.

    ``parse_special`` (None: keep what ``tokenizer`` already does, else False) re-wraps an
    :class:`HFTokenizer` that treats special-token strings the other way.
    """
    if isinstance(tokenizer, HFTokenizer):
        if parse_special is None or parse_special == tokenizer.parse_special:
            return tokenizer
        return HFTokenizer(tokenizer.hf, parse_special=parse_special)
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
    """Move the prompt's trailing whitespace to the front of the response.

    >>> move_whitespace("The capital of France is ", "Paris")
    ('The capital of France is', ' Paris')
    """
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
        context, dropped = self._fit(ex, context, response_ids)
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
            boundary, response_ids = "split", self._split_response(prompt, prompt_ids, response,
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
        context, dropped = self._fit(ex, context, response_ids)
        return Encoded(tuple(context), tuple(response_ids), response, boundary, dropped, eos_scored)

    def _split_response(self, prompt: str, prompt_ids: list[int], response: str, ex: Example
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

    def _fit(self, ex: Example, context: list[int], response_ids: list[int]
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
