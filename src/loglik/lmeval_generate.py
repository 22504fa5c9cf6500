"""``generate_until`` for :class:`loglik.lmeval.LoglikLM`: the model's own ``generate``.

Requests are grouped by their generation kwargs, sorted by prompt length (longest first)
and batched so that a batch holds at most ``batch_tokens`` prompt-plus-generated tokens;
rows are left padded with an attention mask. Prompts are tokenized by loglik's encoder
rules (BOS as the tokenizer adds it, never doubled) and left-truncated to leave room for
``max_gen_toks`` as lm-eval's ``hf`` model does. Generation stops at the ``until`` strings
(and EOS); the text is cut at the first stop string, as lm-eval does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .backends.base import TORCH_MODEL, supports
from .errors import ConfigError

if TYPE_CHECKING:
    from .lmeval import LoglikLM


def torch_model(backend: Any) -> Any:
    """The ``transformers`` model behind a backend that has one, for ``generate``."""
    model = getattr(backend, "model", None)
    if (supports(backend, TORCH_MODEL) or model is not None) and hasattr(model, "generate"):
        return model
    raise ConfigError(f"generate_until tasks need a backend with a transformers model "
                      f"(the HF backend); {type(backend).__name__} only scores. Run "
                      "log-likelihood tasks with it, or load the model with pretrained=PATH")


def prompt_ids(lm: LoglikLM, contexts: Sequence[str], room: int | None) -> list[list[int]]:
    """Token ids of each prompt (BOS per policy), keeping at most ``room`` from the right."""
    encoder = lm.scorer.encoder
    bos = encoder.tok.bos_token_id
    out = []
    for ids in encoder.tok.encode_batch(list(contexts)):
        ids = list(ids)
        if not ids:
            ids = [encoder.start_token()]
        elif encoder.add_bos and ids[0] != bos:
            ids = [bos, *ids]
        out.append(ids[-room:] if room else ids)
    return out


def generate_all(lm: LoglikLM, args: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
    """One generated string per ``(context, gen_kwargs)``, in order."""
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

    model = torch_model(lm.scorer.backend)
    tok = lm.hf_tokenizer
    if tok is None:
        raise ConfigError("generate_until needs a Hugging Face tokenizer under the scorer")
    results: list[str | None] = [None] * len(args)
    groups: dict[str, list[int]] = {}
    for i, (_, gen_kwargs) in enumerate(args):
        groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
    eos_text = tok.decode([tok.eos_token_id]) if tok.eos_token_id is not None else None
    for members in groups.values():
        kwargs = normalize_gen_kwargs(dict(args[members[0]][1]), lm.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        max_gen = int(kwargs.pop("max_gen_toks"))
        limit = lm.max_length
        if limit is not None and max_gen >= limit:
            raise ConfigError(f"max_gen_toks {max_gen} must be less than the model's context "
                              f"{limit}")
        contexts = [args[i][0] for i in members]
        seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        # an encoder-decoder model reads the prompt in its encoder: the whole context is its
        # own, the generated tokens go to the decoder
        ids = (encoder_ids(lm, contexts, limit) if seq2seq
               else prompt_ids(lm, contexts, limit - max_gen if limit else None))
        order = sorted(range(len(members)), key=lambda k: -len(ids[k]))
        start = 0
        while start < len(order):
            rows = max(1, lm.scorer.batch_tokens // (len(ids[order[start]]) + max_gen))
            batch = order[start:start + rows]
            start += len(batch)
            texts = _generate(model, tok, [ids[k] for k in batch], until, max_gen, kwargs,
                              seq2seq=seq2seq)
            for k, text in zip(batch, texts):
                results[members[k]] = text
    return results  # type: ignore[return-value]


def encoder_ids(lm: LoglikLM, contexts: Sequence[str], room: int | None) -> list[list[int]]:
    """An encoder-decoder model's encoder input per prompt: with the tokenizer's own special
    tokens, as the scorer encodes a prompt (:mod:`loglik.tokenize_seq2seq`); at most ``room``
    kept from the right."""
    from .types import Example

    encoded = lm.scorer.encoder.encode_many([Example(c, "") for c in contexts])
    return [list(e.context_ids)[-room:] if room else list(e.context_ids) for e in encoded]


def _generate(model: Any, tok: Any, rows: list[list[int]], until: list[str], max_gen: int,
              kwargs: dict[str, Any], *, seq2seq: bool = False) -> list[str]:
    """Left-padded batch generation; the new tokens decoded and cut at the stop strings
    (an encoder-decoder model's output: its decoder tokens after the start token)."""
    import torch

    width = max(len(r) for r in rows)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)  # (B, T)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    options = dict(kwargs)
    if not options.get("do_sample"):
        options["do_sample"] = False
        options.pop("temperature", None)
    stops = [s for s in until if s]
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_gen,
                             pad_token_id=pad, stop_strings=stops or None,
                             tokenizer=tok if stops else None, **options)   # (B, T + new)
    texts = []
    for row in (out[:, 1:] if seq2seq else out[:, width:]).tolist():
        text = tok.decode(row, skip_special_tokens=True)
        for s in stops:
            text = text.split(s)[0]
        texts.append(text)
    return texts
