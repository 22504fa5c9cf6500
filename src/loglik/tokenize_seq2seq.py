"""Text to token ids for encoder-decoder models (T5, BART): two sides, no boundary to find.

The prompt is the encoder's input, tokenized with the tokenizer's own special tokens (T5
appends ``</s>``, BART wraps in ``<s> ... </s>``) as the model was trained. The response is
the decoder's target, tokenized alone without special tokens (``boundary="seq2seq"``); the
decoder reads it after its start token (:mod:`loglik.backends.seq2seq`). The target's EOS is
scored only with ``score_eos``, as for causal models. The whitespace rule, special-token
rule (``parse_special``) and token-id records work as in :mod:`loglik.tokenize`.

Each side reads at most ``max_length`` tokens. A prompt longer than that is an error, or with
``truncate="left"`` loses tokens from its left (a leading special token the tokenizer put
there, BART's ``<s>``, stays first; T5's trailing ``</s>`` stays last), and
``truncated_tokens`` says how many. A response longer than that is always an error: it is
the decoder's target, every token of which is scored, and cutting or windowing it would
change what is being scored (a decoder window would lose the start of its own target).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import ContextLengthError, InputError
from .tokenize import Encoder
from .types import Encoded, Example


class Seq2SeqEncoder(Encoder):
    """:class:`loglik.tokenize.Encoder` for encoder-decoder models (same options)."""

    def encode_many(self, examples: Sequence[Example]) -> list[Encoded]:
        """Encode with two batched tokenizer calls: prompts (with specials), responses."""
        for ex in examples:
            if ex.messages is not None:
                raise InputError("conversations (messages) are scored with causal chat "
                                 "models; give this encoder-decoder model prompt/response",
                                 source=ex.source, line=ex.line, field="messages")
        text = [ex for ex in examples if ex.prompt_ids is None]
        pairs = [self._texts(ex) for ex in text]
        hf = self.tok.hf   # type: ignore[attr-defined]
        split = not self.options.parse_special
        prompts = hf([p for p, _ in pairs], add_special_tokens=True,
                     split_special_tokens=split)["input_ids"] if pairs else []
        responses = self.tok.encode_batch([r for _, r in pairs])
        done = iter([self._finish_seq2seq(ex, r, p_ids, r_ids)
                     for ex, (_, r), p_ids, r_ids in zip(text, pairs, prompts, responses)])
        return [self._ids_seq2seq(ex) if ex.prompt_ids is not None else next(done)
                for ex in examples]

    def _finish_seq2seq(self, ex: Example, response: str, prompt_ids: list[int],
                        response_ids: list[int]) -> Encoded:
        context = list(prompt_ids) or [self.start_token()]
        response_ids = list(response_ids)
        if self.options.score_eos:
            response_ids.append(self.tok.eos_token_id)
        context, dropped = self._fit_encoder(ex, context)
        self._check_sides(ex, context, response_ids)
        return Encoded(tuple(context), tuple(response_ids), response, "seq2seq",  # type: ignore
                       dropped, self.options.score_eos)

    def _ids_seq2seq(self, ex: Example) -> Encoded:
        enc = self.encode_ids(ex)   # checks the ids; context as given
        return Encoded(tuple(ex.prompt_ids or ()) or enc.context_ids, enc.response_ids,
                       enc.response_text, "ids", 0, enc.eos_scored)

    def _fit_encoder(self, ex: Example, context: list[int]) -> tuple[list[int], int]:
        """With ``truncate="left"``, the encoder input cut to ``max_length`` from the left."""
        limit = self.max_length
        if limit is None or len(context) <= limit or self.options.truncate != "left":
            return context, 0
        specials = set(self.tok.hf.all_special_ids)   # type: ignore[attr-defined]
        keep = 1 if context[0] in specials and limit > 1 else 0
        dropped = len(context) - limit
        return context[:keep] + context[keep + dropped:], dropped

    def _check_sides(self, ex: Example, context: list[int], response_ids: list[int]) -> None:
        """Encoder and decoder each read at most ``max_length`` tokens."""
        limit = self.max_length
        if limit is None:
            return
        if len(context) > limit:
            raise ContextLengthError(f"the prompt needs {len(context)} tokens but the model's "
                                     f"encoder reads at most {limit}; shorten it, or pass "
                                     "--truncate left (truncate='left') to drop prompt tokens "
                                     "from the left", source=ex.source, line=ex.line,
                                     field="prompt")
        if len(response_ids) > limit:
            raise ContextLengthError(f"the response needs {len(response_ids)} tokens but the "
                                     f"model's decoder reads at most {limit}; the response is "
                                     "the scored target and is never truncated (--truncate "
                                     "left cuts the prompt only): shorten it or split it into "
                                     "several records", source=ex.source, line=ex.line,
                                     field="response")
