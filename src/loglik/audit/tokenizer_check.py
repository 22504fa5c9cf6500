"""Check 4 of the audit: do the tokenizer and the model agree, and what did the data do?

* vocabulary: the tokenizer's size against the model's embedding rows — a tokenizer with more
  entries than the model can embed fails (the model may have more rows: padding);
* special tokens: BOS/EOS/PAD/UNK ids exist in the model, and agree with the model config's
  ids where both are set and the id matters (BOS when it is added, EOS when it is scored);
* data: no token id of any encoded example is beyond the embedding; BOS policy, how many
  contexts start with BOS, none starts with a doubled BOS, no response token is BOS;
* boundary: how many examples fell back to ``split`` (with examples), and which could not be
  tokenized at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..backends.base import TORCH_MODEL, supports
from ..errors import LoglikError
from ..types import Encoded, Example
from .result import CheckResult

if TYPE_CHECKING:
    from ..scorer import Scorer


def _model(scorer: Scorer) -> Any | None:
    return scorer.backend.model if supports(scorer.backend, TORCH_MODEL) else None


def embedding_rows(scorer: Scorer) -> int:
    """How many token ids the model can embed (its input embedding rows)."""
    model = _model(scorer)
    if model is not None and hasattr(model, "get_input_embeddings"):
        emb = model.get_input_embeddings()
        if emb is not None and hasattr(emb, "weight"):
            return int(emb.weight.shape[0])
    return int(scorer.backend.vocab_size)


def encode_each(scorer: Scorer, examples: Sequence[Example]
                ) -> tuple[list[Encoded | None], list[dict[str, Any]]]:
    """Encode examples one by one; failures are collected, not raised."""
    encoded: list[Encoded | None] = []
    errors = []
    for i, ex in enumerate(examples):
        try:
            encoded.append(scorer.encoder.encode_many([ex])[0])
        except LoglikError as exc:
            encoded.append(None)
            errors.append({"example": i, "error": str(exc)[:200]})
    return encoded, errors


def _snippet(ex: Example) -> str:
    return f"{ex.prompt[-30:]!r} + {ex.response[:30]!r}"


def check_tokenizer(scorer: Scorer, examples: Sequence[Example],
                    encoded: Sequence[Encoded | None], errors: Sequence[dict[str, Any]]
                    ) -> CheckResult:
    tok = scorer.tokenizer
    rows = embedding_rows(scorer)
    problems: list[str] = []
    notes: list[str] = []
    n_tok = len(tok)
    if n_tok > rows:
        problems.append(f"the tokenizer has {n_tok} entries but the model embeds only {rows} "
                        f"ids: ids {rows}..{n_tok - 1} cannot be embedded (wrong tokenizer "
                        "for this model, or tokens added without resize_token_embeddings)")
    elif n_tok < rows:
        notes.append(f"the model has {rows - n_tok} embedding rows beyond the tokenizer's "
                     f"{n_tok} (padding; harmless)")

    special = {"bos": tok.bos_token_id, "eos": tok.eos_token_id,
               "pad": getattr(getattr(tok, "hf", None), "pad_token_id", None),
               "unk": getattr(getattr(tok, "hf", None), "unk_token_id", None)}
    for name, tid in special.items():
        if tid is not None and not 0 <= tid < rows:
            problems.append(f"{name} token id {tid} is outside the model's {rows} embeddings")
    config = getattr(_model(scorer), "config", None)
    used = {"bos": scorer.encoder.add_bos, "eos": scorer.options.score_eos}
    for name in ("bos", "eos"):
        ours, theirs = special[name], getattr(config, f"{name}_token_id", None)
        if ours is None or theirs is None:
            continue
        agree = ours in theirs if isinstance(theirs, (list, tuple)) else ours == theirs
        if not agree:
            msg = (f"tokenizer {name.upper()} id {ours} differs from the model config's "
                   f"{theirs}")
            (problems if used[name] else notes).append(msg)

    bos = tok.bos_token_id
    good = [(ex, e) for ex, e in zip(examples, encoded) if e is not None]
    out_of_range = [{"example": i, "ids": sorted({t for t in e.context_ids + e.response_ids
                                                  if not 0 <= t < rows})[:5]}
                    for i, (_, e) in enumerate(good)
                    if any(not 0 <= t < rows for t in e.context_ids + e.response_ids)]
    if out_of_range:
        problems.append(f"{len(out_of_range)} example(s) have token ids the model cannot "
                        f"embed (first: {out_of_range[0]})")
    starts_bos = sum(1 for _, e in good if bos is not None and e.context_ids[:1] == (bos,))
    doubled = [i for i, (_, e) in enumerate(good)
               if bos is not None and e.context_ids[:2] == (bos, bos)]
    if doubled:
        problems.append(f"{len(doubled)} example(s) start with a doubled BOS "
                        f"(first: example {doubled[0]}); the tokenizer already adds BOS, "
                        "so pass bos='never' or fix the encoding")
    bos_scored = [i for i, (_, e) in enumerate(good) if bos is not None and bos in
                  e.response_ids and not (e.eos_scored and bos == tok.eos_token_id
                                          and e.response_ids.index(bos) == len(e.response_ids) - 1)]
    if bos_scored:
        problems.append(f"{len(bos_scored)} example(s) score a BOS token as part of the "
                        f"response (first: example {bos_scored[0]})")
    split = [i for i, (_, e) in enumerate(good) if e.boundary == "split"]
    if errors:
        problems.append(f"{len(errors)} example(s) could not be tokenized exactly "
                        f"(first: {errors[0]['error'][:120]})")

    details: dict[str, Any] = {
        "tokenizer_size": n_tok, "embedding_rows": rows,
        "special_ids": {k: v for k, v in special.items() if v is not None},
        "bos_policy": scorer.options.bos, "adds_bos": scorer.encoder.add_bos,
        "examples": len(examples), "contexts_starting_with_bos": starts_bos,
        "doubled_bos": len(doubled), "bos_in_response": len(bos_scored),
        "out_of_range": out_of_range[:5],
        "boundary_split": len(split),
        "split_examples": [_snippet(good[i][0]) for i in split[:3]],
        "tokenization_errors": list(errors[:3]),
        "problems": problems, "notes": notes,
    }
    if problems:
        summary = "; ".join(problems)
    else:
        summary = (f"tokenizer {n_tok} entries / model {rows} rows; BOS "
                   f"{'added' if scorer.encoder.add_bos else 'not added'} "
                   f"({starts_bos} of {len(good)} contexts start with it, none doubled); "
                   f"{len(split)} of {len(good)} example(s) used the split boundary")
    return CheckResult("tokenizer", "fail" if problems else "pass", summary, details)
