"""The scorer: examples in, :class:`~loglik.types.Score` out, in input order.

It composes the stages of shared/DESIGN.md — :mod:`loglik.data` (examples),
:mod:`loglik.tokenize` (ids and boundary), :mod:`loglik.plan` (batches) and a backend
(per-token log-probs) — and owns nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from .backends.base import (PACKED_ROWS, SHARED_CONTEXT, Backend, PackedScoring, check_results,
                            supports)
from .data import Fields, to_examples
from .default_model import default_model_path
from .errors import ConfigError, LoglikError
from .explain import explain as explain_pair
from .longtext import score_text as score_long_text
from .plan import default_batch_tokens, plan_batches, plan_packed
from .tokenize import EncodeOptions, Encoder, as_text_tokenizer, token_texts
from .types import Detail, Encoded, Example, FailedRecord, Request, Score, TokenResult


class Scorer:
    """Computes log Pr(response | prompt) with a backend and its tokenizer.

    Args:
        backend: anything following :class:`loglik.backends.base.Backend`.
        tokenizer: a Hugging Face tokenizer or a :class:`loglik.tokenize.TextTokenizer`.
        bos: ``"auto"`` (follow the tokenizer), ``"always"`` or ``"never"``.
        score_eos: append EOS to every response and score it.
        whitespace: ``"move"`` the prompt's trailing whitespace to the response, or ``"keep"``.
        truncate: ``"error"`` when an example exceeds the context, or ``"left"`` to drop
            prompt tokens from the left (the count is reported per score).
        batch_tokens: padded tokens per forward pass (default 2048 on CPU, 8192 on an
            accelerator: :func:`loglik.plan.default_batch_tokens`).
        window: examples tokenized and planned together when streaming.
        share_context: requests whose contexts are the same token ids read the context once
            (a tree row or a reused KV cache), when the backend declares ``shared_context``.
        pack: put several short examples side by side in one row (block-diagonal mask,
            positions restarting per example) instead of padding, when the backend declares
            ``packed_rows`` (:mod:`loglik.backends.base`).
        parse_special: special-token strings in the text (``</s>``, ``<|endoftext|>``) become
            control tokens; by default they are tokenized as the characters the user typed.
        turns: conversations (``messages`` records, :mod:`loglik.chat`): score the
            ``"last"`` assistant message or ``"all"`` of them (``extra["turns"]``).
        end_of_turn: conversations: the span includes the template's end-of-turn tokens.
        chat_template: conversations: a Jinja chat template instead of the tokenizer's.

    Example:
        >>> scorer = Scorer.from_pretrained("path/to/model")        # doctest: +SKIP
        >>> s = scorer.score("The capital of France is", " Paris")  # doctest: +SKIP
        >>> s.logprob == math.fsum(s.token_logprobs)                # doctest: +SKIP
        True
    """

    def __init__(self, backend: Backend, tokenizer: Any, *, bos: str = "auto",
                 score_eos: bool = False, whitespace: str = "move", truncate: str = "error",
                 batch_tokens: int | None = None, window: int = 1024,
                 share_context: bool = True, pack: bool = True,
                 parse_special: bool = False, turns: str = "last", end_of_turn: bool = True,
                 chat_template: str | None = None) -> None:
        if batch_tokens is None:
            batch_tokens = default_batch_tokens(backend)
        if batch_tokens < 1 or window < 1:
            raise ConfigError("batch_tokens and window must be positive")
        self.backend = backend
        self.tokenizer = as_text_tokenizer(tokenizer, parse_special=parse_special)
        self.options = EncodeOptions(bos=bos, score_eos=score_eos, whitespace=whitespace,
                                     truncate=truncate, parse_special=parse_special,
                                     turns=turns, end_of_turn=end_of_turn,  # type: ignore
                                     chat_template=chat_template)
        self.encoder = Encoder(self.tokenizer, self.options, backend.max_length)
        self.batch_tokens = batch_tokens
        self.window = window
        self.share_context = share_context
        self.pack = pack
        self.last_plan: Any = None   # the plan of the last run_requests (padding, sharing)
        # called with the number of requests each finished batch answered (progress bars)
        self.on_batch: Callable[[int], None] | None = None

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, model: str | None = None, *, dtype: str | None = None,
                        device: str = "cpu", trust_remote_code: bool = False,
                        allow_pickle: bool = False, revision: str | None = None,
                        chunk_size: int | None = None, max_length: int | None = None,
                        threads: int | None = None, adapter: str | None = None,
                        bos: str = "auto", score_eos: bool = False, whitespace: str = "move",
                        truncate: str = "error", batch_tokens: int | None = None,
                        window: int = 1024, share_context: bool = True, pack: bool = True,
                        parse_special: bool = False, turns: str = "last",
                        end_of_turn: bool = True, chat_template: str | None = None) -> Scorer:
        """Load a Hugging Face causal LM (local folder or hub id; None = the default model).

        A folder whose config says ``is_encoder_decoder`` (T5, BART) loads as
        :meth:`from_seq2seq`. ``threads`` sets torch's intra-op CPU threads for the process
        (default: torch's own). ``adapter``: a LoRA adapter folder (``loglik train --lora``),
        merged into the model. The options after it are the :class:`Scorer`'s. A path ending
        in ``.gguf`` is a llama.cpp model (:mod:`loglik.backends.llamacpp`). ``dtype=None``:
        bfloat16 on CUDA, float32 elsewhere (log-softmax stays fp32 either way).
        """
        if model is not None and str(model).lower().endswith(".gguf"):
            from .backends.llamacpp import scorer_from_gguf

            return scorer_from_gguf(
                cls, model, dtype=dtype, device=device, revision=revision, adapter=adapter,
                chunk_size=chunk_size, max_length=max_length, threads=threads, bos=bos,
                score_eos=score_eos, whitespace=whitespace, truncate=truncate,
                batch_tokens=batch_tokens, window=window, share_context=share_context,
                pack=pack, parse_special=parse_special, turns=turns, end_of_turn=end_of_turn,
                chat_template=chat_template)
        from .backends.hf import (HFBackend, default_dtype, load_hf, load_tokenizer,  # torch
                                  verdicts)
        from .backends.hf.compact import load_compact
        from .tokenize import file_tokenizer

        if threads is not None:
            if threads < 1:
                raise ConfigError(f"threads must be >= 1, got {threads}; pass the number of "
                                  "CPU cores to use")
            import torch

            torch.set_num_threads(threads)

        options = dict(bos=bos, score_eos=score_eos, whitespace=whitespace, truncate=truncate,
                       batch_tokens=batch_tokens, window=window, share_context=share_context,
                       pack=pack, parse_special=parse_special, turns=turns,
                       end_of_turn=end_of_turn, chat_template=chat_template)
        if model is not None:
            from .backends.seq2seq import is_encoder_decoder, load_seq2seq

            if is_encoder_decoder(model, revision=revision, trust_remote_code=trust_remote_code):
                s2s, tok = load_seq2seq(model, dtype=dtype, device=device,
                                        trust_remote_code=trust_remote_code,
                                        allow_pickle=allow_pickle, revision=revision)
                if adapter is not None:   # a LoRA adapter trained on this seq2seq model
                    from .train_lora import apply_adapter

                    s2s = apply_adapter(s2s, adapter)
                return cls.from_seq2seq(s2s, tok, chunk_size=chunk_size, max_length=max_length,
                                        **options)  # type: ignore[arg-type]
        name = model or default_model_path()
        dtype = dtype if dtype is not None else default_dtype(device)
        # The embedded default model runs on loglik's own plain-Llama module: a short command
        # then skips transformers' model imports, most of its start-up (backends/hf/compact).
        compact = (load_compact(name, dtype=dtype, device=device)
                   if model is None and adapter is None else None)
        if compact is not None:
            hf_model, tokenizer = compact, file_tokenizer(name) or load_tokenizer(name)
        else:
            hf_model, tokenizer = load_hf(name, dtype=dtype, device=device,
                                          trust_remote_code=trust_remote_code,
                                          allow_pickle=allow_pickle, revision=revision)
        if adapter is not None:
            from .train_lora import apply_adapter

            hf_model = apply_adapter(hf_model, adapter)
        # The load-time self-checks' verdicts are remembered per model folder (and code).
        key = (verdicts.folder_key(name, dtype=dtype, device=device,
                                   engine=type(hf_model).__name__)
               if adapter is None else None)
        known = verdicts.load(key)
        backend = HFBackend(hf_model, chunk_size=chunk_size, max_length=max_length,
                            verdicts=known)
        if known is None:
            verdicts.save(key, backend.verdicts)
        return cls(backend, tokenizer, **options)  # type: ignore[arg-type]

    @classmethod
    def from_hf(cls, model: Any, tokenizer: Any, *, chunk_size: int | None = None,
                max_length: int | None = None, bos: str = "auto", score_eos: bool = False,
                whitespace: str = "move", truncate: str = "error",
                batch_tokens: int | None = None, window: int = 1024,
                share_context: bool = True, pack: bool = True, parse_special: bool = False,
                turns: str = "last", end_of_turn: bool = True,
                chat_template: str | None = None) -> Scorer:
        """Wrap a ``transformers`` model and tokenizer the caller already loaded."""
        from .backends.hf import HFBackend

        return cls(HFBackend(model, chunk_size=chunk_size, max_length=max_length), tokenizer,
                   bos=bos, score_eos=score_eos, whitespace=whitespace, truncate=truncate,
                   batch_tokens=batch_tokens, window=window, share_context=share_context,
                   pack=pack, parse_special=parse_special, turns=turns, end_of_turn=end_of_turn,
                   chat_template=chat_template)

    @classmethod
    def from_seq2seq(cls, model: Any, tokenizer: Any, *, chunk_size: int | None = None,
                     max_length: int | None = None, bos: str = "auto", score_eos: bool = False,
                     whitespace: str = "move", truncate: str = "error",
                     batch_tokens: int | None = None, window: int = 1024,
                     parse_special: bool = False, **ignored: Any) -> Scorer:
        """Wrap an encoder-decoder model (T5, BART): prompt to the encoder, response to the
        decoder (:mod:`loglik.backends.seq2seq`, :mod:`loglik.tokenize_seq2seq`).

        Conversation options (``turns``, ``end_of_turn``, ``chat_template``) and row sharing
        (``share_context``, ``pack``) do not apply and are accepted for a uniform call.
        """
        from .backends.seq2seq import Seq2SeqBackend
        from .tokenize_seq2seq import Seq2SeqEncoder

        scorer = cls(Seq2SeqBackend(model, chunk_size=chunk_size, max_length=max_length),
                     tokenizer, bos=bos, score_eos=score_eos, whitespace=whitespace,
                     truncate=truncate, batch_tokens=batch_tokens, window=window,
                     parse_special=parse_special)
        scorer.encoder = Seq2SeqEncoder(scorer.tokenizer, scorer.options,
                                        scorer.backend.max_length)
        return scorer

    @classmethod
    def from_server(cls, url: str, *, tokenizer: Any, model: str | None = None,
                    **options: Any) -> Scorer:
        """Score through an OpenAI-compatible completions server (vLLM, llama-cpp-python,
        ``loglik serve``), tokenizing with ``tokenizer`` (:mod:`loglik.backends.openai`)."""
        from .backends.openai import scorer_from_server

        return scorer_from_server(cls, url, tokenizer=tokenizer, model=model, **options)

    @classmethod
    def from_llama(cls, llama: Any, **options: Any) -> Scorer:
        """Wrap a ``llama_cpp.Llama`` the caller already loaded (:mod:`loglik.backends.llamacpp`)."""
        from .backends.llamacpp import scorer_from_llama

        return scorer_from_llama(cls, llama, **options)

    # -- scoring ---------------------------------------------------------------------------
    def encode(self, prompt: str, response: str) -> Encoded:
        """The token ids and boundary decision for one pair."""
        return self.encoder.encode(prompt, response)

    def score(self, prompt: str, response: str, *, rank: bool = False, entropy: bool = False,
              top_k: int = 0) -> Score:
        """log Pr(response | prompt) with its per-token terms."""
        return self.score_many([Example(prompt, response, source="<python>", line=1)],
                               rank=rank, entropy=entropy, top_k=top_k)[0]

    def score_ids(self, prompt_ids: Sequence[int], response_ids: Sequence[int], *,
                  rank: bool = False, entropy: bool = False, top_k: int = 0) -> Score:
        """log Pr(response_ids | prompt_ids) for token ids as given (``boundary="ids"``).

        No boundary rule and no BOS added unless ``bos="always"``; an empty prompt conditions
        on BOS. Byte and char counts come from decoding the response ids after the prompt's.

        Example:
            >>> ids = scorer.tokenizer.encode_batch(["The capital of France is", " Paris"])
            >>> scorer.score_ids(ids[0], ids[1]).boundary                # doctest: +SKIP
            'ids'
        """
        ex = Example("", "", source="<python>", line=1,
                     prompt_ids=tuple(int(t) for t in prompt_ids),
                     response_ids=tuple(int(t) for t in response_ids))
        return self.score_many([ex], rank=rank, entropy=entropy, top_k=top_k)[0]

    def score_choices(self, prompt: str, choices: Sequence[str], *, rank: bool = False,
                      entropy: bool = False, top_k: int = 0) -> list[Score]:
        """log Pr(choice | prompt) for each choice, reading the prompt once.

        Equivalent to ``[score(prompt, c) for c in choices]``: choices whose prompt tokens
        are the same ids (every choice, unless the tokenizer merges across the boundary)
        share one forward pass over the prompt (see ``share_context``).

        Example:
            >>> [s.logprob for s in scorer.score_choices("2+2=", ["4", "5"])]  # doctest: +SKIP
            [-0.9, -3.2]
        """
        return self.score_many([Example(prompt, c, id=i, source="<python>", line=i + 1)
                                for i, c in enumerate(choices)],
                               rank=rank, entropy=entropy, top_k=top_k)

    def explain(self, prompt: str | None = None, response: str | None = None, *,
                messages: Sequence[Any] | None = None, top_k: int = 5) -> Any:
        """The per-token decomposition of one pair, or of a conversation's scored assistant
        turn (``messages``) (:class:`loglik.explain.Explanation`)."""
        return explain_pair(self, prompt, response, messages=messages, top_k=top_k)

    def score_text(self, text: str, *, stride: int | None = None, max_length: int | None = None,
                   rank: bool = False, entropy: bool = False, top_k: int = 0) -> Score:
        """log Pr(text) of a document of any length, by strided windows (:mod:`loglik.longtext`).

        Each token is scored once, with ``max_length - stride + 1`` tokens of left context;
        ``extra["num_windows"]`` says how many windows were run.
        """
        return score_long_text(self, text, stride=stride, max_length=max_length, rank=rank,
                               entropy=entropy, top_k=top_k)

    def score_many(self, examples: Iterable[Any], *, fields: Fields = Fields(),
                   rank: bool = False, entropy: bool = False, top_k: int = 0,
                   on_error: str = "stop") -> list[Any]:
        """Score pairs, dicts or Examples; the list is in input order.

        ``on_error="record"``: a record that cannot be encoded (the tokenizer cannot keep
        the boundary guarantee, it does not fit the context) becomes a
        :class:`~loglik.types.FailedRecord` in its place and the rest are scored;
        ``"stop"`` (default) raises after scoring the records before it.
        """
        return list(self.iter_scores(examples, fields=fields, rank=rank, entropy=entropy,
                                     top_k=top_k, on_error=on_error))

    def iter_scores(self, examples: Iterable[Any], *, fields: Fields = Fields(),
                    rank: bool = False, entropy: bool = False, top_k: int = 0,
                    on_error: str = "stop") -> Iterator[Any]:
        """Stream scores in input order, holding at most ``window`` examples at a time."""
        if on_error not in ("stop", "record"):
            raise ConfigError(f"on_error must be 'stop' or 'record', got {on_error!r}")
        detail = Detail(rank=rank, entropy=entropy, top_k=top_k)
        stream = to_examples(examples, fields)
        while True:
            # A bad record stops the run, but the good records before it are scored first.
            chunk: list[Example] = []
            error: LoglikError | None = None
            try:
                chunk.extend(islice(stream, self.window))
            except LoglikError as exc:
                error = exc
            try:
                encoded = self.encoder.encode_many(chunk)
            except LoglikError as exc:
                if on_error == "record":
                    yield from self._score_recording(chunk, detail)
                    encoded = []
                else:
                    encoded, error = self._encode_until_error(chunk), exc
            if encoded:
                yield from self.score_encoded(encoded, chunk[:len(encoded)], detail)
            if error is not None:
                raise error
            if len(chunk) < self.window:
                return

    def _encode_until_error(self, chunk: Sequence[Example]) -> list[Encoded]:
        """Encode one by one and stop before the first example that fails."""
        encoded = []
        for ex in chunk:
            try:
                encoded.append(self.encoder.encode_many([ex])[0])
            except LoglikError:
                break
        return encoded

    def _score_recording(self, chunk: Sequence[Example], detail: Detail
                         ) -> Iterator[Score | FailedRecord]:
        """Encode one by one; a failing example becomes a FailedRecord in its place."""
        items: list[Encoded | FailedRecord] = []
        for ex in chunk:
            try:
                items.append(self.encoder.encode_many([ex])[0])
            except LoglikError as exc:
                items.append(FailedRecord(ex.id, str(exc)))
        good = [i for i, item in enumerate(items) if isinstance(item, Encoded)]
        scores = iter(self.score_encoded([items[i] for i in good],  # type: ignore[misc]
                                         [chunk[i] for i in good], detail))
        for item in items:
            yield item if isinstance(item, FailedRecord) else next(scores)

    def score_encoded(self, encoded: Sequence[Encoded], examples: Sequence[Example] | None = None,
                      detail: Detail = Detail()) -> list[Score]:
        """Score already-encoded examples (batched by the planner)."""
        if any(e.parts for e in encoded):   # conversations scored turn by turn
            from .chat import score_turns

            return score_turns(self, encoded, examples, detail)
        requests = [Request(e.context_ids, e.response_ids) for e in encoded]
        results = self.run_requests(requests, detail)
        ids = [ex.id for ex in examples] if examples is not None else [None] * len(encoded)
        return [self.to_score(e, r, i) for e, r, i in zip(encoded, results, ids)]

    def run_requests(self, requests: Sequence[Request], detail: Detail = Detail()
                     ) -> list[TokenResult]:
        """Plan token-budget batches and run them through the backend, in request order.

        With a backend that declares ``shared_context`` / ``packed_rows``, requests sharing a
        context read it once and short requests share rows (:func:`loglik.plan.plan_packed`);
        otherwise rows are plain length-sorted batches (:func:`loglik.plan.plan_batches`).
        """
        share = self.share_context and supports(self.backend, SHARED_CONTEXT)
        pack = self.pack and supports(self.backend, PACKED_ROWS)
        if share or pack:
            return self._run_packed(requests, detail, share=share, pack=pack)
        results: list[TokenResult | None] = [None] * len(requests)
        lengths = [len(r.context_ids) + len(r.target_ids) - 1 if r.target_ids else 0
                   for r in requests]
        plan = plan_batches(lengths, self.batch_tokens)
        self.last_plan = plan
        for batch in plan.batches:
            batch_requests = [requests[i] for i in batch.indices]
            out = self.backend.score(batch_requests, detail)
            check_results(batch_requests, out)
            for i, res in zip(batch.indices, out):
                results[i] = res
            self._batch_done(len(out))
        return self._fill_empty(results, detail)

    def _batch_done(self, n: int) -> None:
        if self.on_batch is not None and n:
            self.on_batch(n)

    def _fill_empty(self, results: list[TokenResult | None], detail: Detail
                    ) -> list[TokenResult]:
        empty = [i for i, res in enumerate(results) if res is None]
        for i in empty:   # empty response: nothing to forward
            results[i] = TokenResult.empty(detail)
        self._batch_done(len(empty))
        return results  # type: ignore[return-value]

    def _run_packed(self, requests: Sequence[Request], detail: Detail, *, share: bool,
                    pack: bool) -> list[TokenResult]:
        results: list[TokenResult | None] = [None] * len(requests)
        plan = plan_packed([r.context_ids for r in requests],
                           [len(r.target_ids) for r in requests], self.batch_tokens,
                           share=share, pack=pack)
        self.last_plan = plan
        for batch in plan.batches:
            if batch.simple:   # one request per row: the backend's plain padded rows
                idx = [row[0].members[0] for row in batch.rows]
                batch_requests = [requests[i] for i in idx]
                out = self.backend.score(batch_requests, detail)
                check_results(batch_requests, out)
                results_of = dict(zip(idx, out))
            else:
                packed: PackedScoring = self.backend  # type: ignore[assignment]
                results_of = packed.score_packed(batch, requests, detail,
                                                 batch_tokens=self.batch_tokens)
                check_results([requests[i] for i in results_of], list(results_of.values()))
            for i, res in results_of.items():
                results[i] = res
            self._batch_done(len(results_of))
        return self._fill_empty(results, detail)

    def to_score(self, enc: Encoded, res: TokenResult, example_id: Any = None) -> Score:
        """The :class:`Score` of an encoded example from the backend's result for it."""
        ids = list(enc.response_ids)
        tokens = self.tokenizer.convert_ids_to_tokens(ids) if ids else []
        top = None
        if res.top is not None:
            top = [list(zip(self.tokenizer.convert_ids_to_tokens([t for t, _ in alts]),
                            [lp for _, lp in alts])) for alts in res.top]
        return Score(
            logprob=math.fsum(res.logprobs), token_ids=ids, tokens=tokens,
            token_logprobs=list(res.logprobs), token_greedy=list(res.greedy),
            num_tokens=len(ids), num_bytes=len(enc.response_text.encode("utf-8")),
            num_chars=len(enc.response_text), boundary=enc.boundary, id=example_id,
            truncated_tokens=enc.truncated_tokens, token_ranks=res.ranks,
            token_entropies=res.entropies, token_top=top,
            token_texts=token_texts(self.tokenizer, enc))
