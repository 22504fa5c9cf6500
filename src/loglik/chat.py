"""Conversations: log Pr(assistant turn | everything before it), rendered by the chat template.

A record with ``messages`` (OpenAI format: ``[{"role", "content"}, ...]``) is scored on its
last assistant message (``turns="last"``) or on every assistant message (``turns="all"``,
the record's ``logprob`` is their total and ``turns`` lists each).

For assistant message ``k``, the template renders

* ``A``: ``messages[:k]`` with ``add_generation_prompt=True`` — what the model reads before it
  writes the turn (the generation prompt, ``<|im_start|>assistant\\n`` and the like, is
  context), and
* ``B``: ``messages[:k+1]`` — the conversation through the turn.

When ``A``'s tokens are a prefix of ``B``'s, the scored span is the rest (``boundary="chat"``).
When the template's text for ``A`` is a prefix of ``B``'s but the tokens merge across
(a generation prompt ending in a space), the span is tokenized as a continuation of ``A``
exactly as a text response is (``boundary="chat_split"``). Each turn has its own rendering,
so a template that rewrites earlier turns once later ones exist (reasoning blocks removed)
scores every turn as the model saw the conversation when it wrote that turn.

The span is the message's content and the template's end-of-turn tokens (through the last
special token after the content: ``<|im_end|>``, ``</s>``; the separator after it, such as
``\\n``, is not produced by the model and is left out); ``end_of_turn=False`` keeps only the
content. Special-token strings inside a message's content are text: the template's text is
tokenized with its special tokens, the contents without.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError, TokenizationError
from .types import Encoded, Example

_GENERATION = re.compile(r"\{%-?\s*generation\s*-?%\}")


def assistant_turns(messages: Sequence[Mapping[str, Any]], turns: str) -> list[int]:
    """Indices of the assistant messages to score: the last one, or all of them."""
    found = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return found if turns == "all" else found[-1:]


class ChatRenderer:
    """Renders conversations with a tokenizer's chat template and tokenizes the rendering.

    Args:
        encoder: the :class:`loglik.tokenize.Encoder` whose tokenizer (a Hugging Face one)
            and options (``chat_template``, ``end_of_turn``, BOS policy) apply.
    """

    def __init__(self, encoder: Any) -> None:
        from .tokenize import as_text_tokenizer

        hf = getattr(encoder.tok, "hf", None)
        if hf is None or not hasattr(hf, "apply_chat_template"):
            raise ConfigError("conversations need a Hugging Face tokenizer with "
                              "apply_chat_template")
        self.encoder = encoder
        self.hf = hf
        self.template = encoder.options.chat_template
        if self.template is None and not getattr(hf, "chat_template", None):
            raise ConfigError("this tokenizer has no chat template, so a conversation cannot "
                              "be rendered; pass one with --chat-template FILE "
                              "(Scorer(chat_template=...)), a Jinja template as in "
                              "tokenizer_config.json")
        self.text = as_text_tokenizer(hf, parse_special=False)
        self.special = as_text_tokenizer(hf, parse_special=True)
        self.special_strings = [t for t in hf.all_special_tokens if t]
        self.special_ids = set(hf.all_special_ids)

    def render(self, messages: Sequence[Mapping[str, Any]], generation: bool) -> str:
        kwargs: dict[str, Any] = dict(tokenize=False, add_generation_prompt=generation)
        if self.template is not None:
            kwargs["chat_template"] = self.template
        try:
            return self.hf.apply_chat_template([dict(m) for m in messages], **kwargs)
        except Exception as exc:   # jinja2 errors: the template's raise_exception and the like
            raise TokenizationError(f"the chat template failed on this conversation: {exc}"
                                    ) from None

    def ids(self, text: str, messages: Sequence[Mapping[str, Any]], ex: Example) -> list[int]:
        """Token ids of a rendering: the template's special tokens parsed, contents' as text.

        Without special-token strings in the contents, one tokenizer call (as
        ``apply_chat_template(tokenize=True)``). Otherwise the rendering is cut at those
        strings; each piece is tokenized as the continuation of the ones before it (the
        check of :meth:`loglik.tokenize.Encoder.continuation_ids`), the strings as text.
        """
        cuts = self._injected(text, messages)
        if not cuts:
            ids = self.special.encode_batch([text])[0]
        else:
            from .tokenize import EncodeOptions, Encoder

            as_text = Encoder(self.text, EncodeOptions(parse_special=False))
            as_template = Encoder(self.special, EncodeOptions(parse_special=True))
            bounds = [0] + [x for cut in cuts for x in cut] + [len(text)]
            ids = []
            for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
                if a == b:
                    continue
                enc = as_text if n % 2 else as_template
                if not ids:
                    ids = enc.tok.encode_batch([text[a:b]])[0]
                else:
                    ids += enc.continuation_ids(self.special.decode(ids), ids, text[a:b], ex)
        bos = self.encoder.tok.bos_token_id
        if self.encoder.add_bos and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        return ids

    def _injected(self, text: str, messages: Sequence[Mapping[str, Any]]
                  ) -> list[tuple[int, int]]:
        """(start, end) of the special-token strings inside the contents, in ``text``."""
        cuts: list[tuple[int, int]] = []
        cursor = 0
        for m in messages:
            c = m["content"]
            if not c or not any(s in c for s in self.special_strings):
                continue
            at = text.find(c, cursor)
            if at < 0:   # the template changed this content: search the whole rendering
                continue
            for s in self.special_strings:
                i = c.find(s)
                while i >= 0:
                    cuts.append((at + i, at + i + len(s)))
                    i = c.find(s, i + len(s))
            cursor = at + len(c)
        cuts.sort()
        merged: list[tuple[int, int]] = []
        for a, b in cuts:   # overlapping strings ("<s>" inside "<s>>") become one cut
            if merged and a < merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    def encode_turn(self, ex: Example, k: int) -> Encoded:
        """Context and scored span of assistant message ``k`` of ``ex.messages``."""
        messages = ex.messages or ()
        before = self.render(messages[:k], generation=True)
        through = self.render(messages[:k + 1], generation=False)
        a_ids = self.ids(before, messages[:k], ex)
        b_ids = self.ids(through, messages[:k + 1], ex)
        if b_ids[:len(a_ids)] == a_ids:
            boundary, span = "chat", b_ids[len(a_ids):]
        elif through.startswith(before):
            from .tokenize import EncodeOptions, Encoder

            splitter = Encoder(self.special, EncodeOptions(parse_special=True))
            head = self.special.decode(a_ids)
            boundary = "chat_split"
            span = splitter.continuation_ids(head, a_ids, through[len(before):], ex)
        else:
            raise TokenizationError(
                f"the chat template renders message {k} so that the conversation before it "
                "(with the generation prompt) is not a prefix of the conversation through it; "
                "its span cannot be found. Pass a template that keeps that property with "
                "--chat-template FILE", source=ex.source, line=ex.line)
        if _GENERATION.search(self.template or self.hf.chat_template or ""):
            self._check_generation_mask(messages[:k + 1], b_ids, len(a_ids),
                                        len(a_ids) + len(span), ex, k)
        span = self._trim(span, a_ids, messages[k]["content"], ex, k)
        if not span:
            raise TokenizationError(f"message {k}: the chat template gives the assistant turn "
                                    "no tokens to score", source=ex.source, line=ex.line)
        head = self.encoder.tok.decode(a_ids)
        full = self.encoder.tok.decode(a_ids + span)
        text = full[len(head):] if full.startswith(head) else self.encoder.tok.decode(span)
        context, dropped = self.encoder.fit_context(ex, a_ids, span)
        return Encoded(tuple(context), tuple(span), text, boundary, dropped)  # type: ignore

    def _check_generation_mask(self, messages: Sequence[Mapping[str, Any]], b_ids: list[int],
                               start: int, end: int, ex: Example, k: int) -> None:
        """The template's ``{% generation %}`` block for turn ``k`` must lie in our span.

        Compared with ``apply_chat_template(return_assistant_tokens_mask=True)``, whose tokens
        are ours unless a content held special-token strings (then there is nothing to
        compare: its tokens differ on purpose).
        """
        kwargs: dict[str, Any] = dict(tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        if self.template is not None:
            kwargs["chat_template"] = self.template
        out = self.hf.apply_chat_template([dict(m) for m in messages], **kwargs)
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        offset = len(b_ids) - len(ids)
        if offset not in (0, 1) or b_ids[offset:] != ids:
            return
        marked = [i + offset for i, m in enumerate(mask) if m]
        if not marked:
            return
        last_run = [marked[-1]]
        for i in reversed(marked[:-1]):   # the last contiguous run is turn k's block
            if i != last_run[-1] - 1:
                break
            last_run.append(i)
        lo, hi = min(last_run), max(last_run) + 1
        if lo < start or hi > end:
            raise TokenizationError(
                f"message {k}: the chat template's generation block marks tokens {lo}..{hi - 1} "
                f"as the assistant's, but the turn's span found by rendering is tokens "
                f"{start}..{end - 1}; the template's generation block and its generation "
                "prompt disagree: fix the template (--chat-template FILE)",
                source=ex.source, line=ex.line)

    def _trim(self, span: list[int], context: list[int], content: str, ex: Example,
              k: int) -> list[int]:
        """Content + end-of-turn tokens (through the last special one), or content only."""
        last = max((i for i, t in enumerate(span) if t in self.special_ids), default=None)
        if self.encoder.options.end_of_turn:
            return span if last is None else span[:last + 1]
        # content only: the fewest tokens whose decode reaches the end of the content
        head = self.encoder.tok.decode(context)
        tail = self.encoder.tok.decode(context + span)[len(head):]
        want = content.rstrip()
        at = tail.find(want)
        if at < 0:
            raise TokenizationError(f"message {k}: the chat template changes the assistant's "
                                    "content, so where it ends cannot be found; score it with "
                                    "its end-of-turn tokens (drop --no-end-of-turn)",
                                    source=ex.source, line=ex.line)
        end = at + len(want)
        lo, hi = 0, len(span)
        while lo < hi:   # decoded length grows with the number of tokens
            mid = (lo + hi) // 2
            if len(self.encoder.tok.decode(context + span[:mid])) - len(head) >= end:
                hi = mid
            else:
                lo = mid + 1
        return span[:lo]


def encode_chat(encoder: Any, ex: Example) -> Encoded:
    """Encode a conversation example: one span, or (``turns="all"``) one part per turn."""
    renderer = encoder.chat_renderer
    if renderer is None:
        renderer = encoder.chat_renderer = ChatRenderer(encoder)
    parts = tuple(renderer.encode_turn(ex, k)
                  for k in assistant_turns(ex.messages or (), encoder.options.turns))
    if encoder.options.turns == "last":
        return parts[0]
    last = parts[-1]
    return Encoded(last.context_ids, last.response_ids, last.response_text, last.boundary,
                   last.truncated_tokens, parts=parts,
                   turn_indices=tuple(assistant_turns(ex.messages or (), "all")))


def score_turns(scorer: Any, encoded: Sequence[Encoded], examples: Sequence[Example] | None,
                detail: Any) -> list[Any]:
    """Score examples some of which have per-turn parts: one Score each, turns listed."""
    from .types import Score

    flat = [p for e in encoded for p in (e.parts or (e,))]
    scores = iter(scorer.score_encoded(flat, None, detail))
    ids = [ex.id for ex in examples] if examples is not None else [None] * len(encoded)
    out = []
    for e, example_id in zip(encoded, ids):
        if not e.parts:
            s = next(scores)
            s.id = example_id
            out.append(s)
            continue
        turns = [next(scores) for _ in e.parts]
        total = Score(
            logprob=sum(t.logprob for t in turns),
            token_ids=[i for t in turns for i in t.token_ids],
            tokens=[x for t in turns for x in t.tokens],
            token_logprobs=[x for t in turns for x in t.token_logprobs],
            token_greedy=[x for t in turns for x in t.token_greedy],
            num_tokens=sum(t.num_tokens for t in turns),
            num_bytes=sum(t.num_bytes for t in turns),
            num_chars=sum(t.num_chars for t in turns),
            boundary="chat_split" if any(t.boundary == "chat_split" for t in turns) else "chat",
            id=example_id, truncated_tokens=max(t.truncated_tokens for t in turns),
            token_ranks=_joined(turns, "token_ranks"),
            token_entropies=_joined(turns, "token_entropies"),
            token_top=_joined(turns, "token_top"),
            token_texts=[x for t in turns for x in t.token_texts])
        total.extra["turns"] = [
            {"index": k, "logprob": t.logprob, "num_tokens": t.num_tokens,
             "num_bytes": t.num_bytes, "num_chars": t.num_chars, "greedy": t.greedy,
             "boundary": t.boundary} for k, t in zip(e.turn_indices or (), turns)]
        out.append(total)
    return out


def _joined(scores: Sequence[Any], name: str) -> list[Any] | None:
    parts = [getattr(s, name) for s in scores]
    return None if parts[0] is None else [x for p in parts for x in p]
