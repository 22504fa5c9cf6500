"""``loglik.train``: fine-tune or pre-train a causal LM by maximising sum log Pr(y | x), or
fine-tune an encoder-decoder LM (T5, BART: the prompt through the encoder with the
tokenizer's own special tokens, the response as the decoder's labels after its start token,
padded rows; :func:`loglik.objective.collate_seq2seq`) on prompt/response records.

Read it top to bottom (no callbacks): load the model (with LoRA adapters if asked) and data,
plan the epochs, then per optimiser step take ``grad_accum`` micro-batches (packed rows when
the model takes them), compute :func:`loglik.objective.response_nll` with ``token_mean`` over
the whole step, backward, sum the gradients over the processes (under ``torchrun``), clip,
AdamW step, warmup + cosine schedule, log. After every epoch the model is scored with the
scorer itself on the training and held-out data (the numbers ``loglik score`` prints for that
checkpoint), logged, and saved.

Output folder::

    OUT/                     the final model (save_pretrained: safetensors + tokenizer; the
                             adapter with --lora, the merged model with --lora --merge)
    OUT/log.jsonl            one record for the plan ("kind": "plan"), per logged step
                             ("step") and per epoch ("epoch")
    OUT/checkpoints/step-N/  save_pretrained folder + trainer_state.pt (optimiser, schedule,
                             RNG, log length); the newest ``keep_checkpoints`` are kept

The run's three parts live beside it: :mod:`loglik.train_setup` (options, model, data, plan,
optimiser), :mod:`loglik.train_loop` (the optimiser steps of an epoch) and
:mod:`loglik.train_log` (the log, the scorer's evaluations, the checkpoints).
(The module is ``trainer`` rather than ``train`` so that ``loglik.train`` stays the function.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .data import Fields
from .train_checkpoint import STATE_FILE
from .train_log import evaluate, interrupted_message
from .train_setup import FEW_STEPS, TrainOptions, lr_factor

__all__ = ["FEW_STEPS", "STATE_FILE", "TrainOptions", "TrainResult", "evaluate",
           "interrupted_message", "lr_factor", "train"]


@dataclass
class TrainResult:
    """What a run produced: where, the per-epoch records of the log, the throughput."""

    output_dir: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    tokens_per_s: float = math.nan
    packed: bool = False          # rows were packed (the model passed the packing check)


def train(data: str, *, model: Any, output_dir: str, eval_data: str | None = None,
          tokenizer: Any = None, text_field: str | None = None, block_size: int | None = None,
          fields: Fields = Fields(), format: str | None = None, bos: str = "auto",
          score_eos: bool = False, whitespace: str = "move", truncate: str = "error",
          turns: str = "all", end_of_turn: bool = True, chat_template: str | None = None,
          resume: bool = False, device: str = "cpu", threads: int | None = None,
          trust_remote_code: bool = False, allow_pickle: bool = False,
          revision: str | None = None, progress: bool | None = None, quiet: bool = False,
          **options: Any) -> TrainResult:
    """Train ``model`` on ``data`` to maximise sum log Pr(response | prompt).

    Under ``torchrun`` / ``accelerate launch`` every process runs this same call; the data
    are sharded by rank and rank 0 logs and saves (:mod:`loglik.train_dist`).

    Args:
        data: prompt/response records (JSONL, CSV, Parquet, as ``loglik score`` reads), or
            plain text for pre-training: a ``.txt`` file (documents separated by blank lines)
            or records with ``text_field`` (see :mod:`loglik.train_data`).
        model: a model folder or hub id to fine-tune; a ``config.json`` (or a folder with a
            config and no weights) to pre-train from scratch; or a ``transformers`` model.
        output_dir: where the final model, ``log.jsonl`` and checkpoints go.
        eval_data: held-out data of the same kind, scored after every epoch.
        tokenizer: a tokenizer folder/id or object (required with a config or model object).
        bos, score_eos, whitespace, truncate: the scorer's encoding rules.
        turns, end_of_turn, chat_template: conversations (records with ``messages``): train
            on every assistant turn (``"all"``, default) or the last one; the loss covers
            each turn's content and end-of-turn tokens (only the content with
            ``end_of_turn=False``), exactly what ``loglik score`` scores.
        resume: continue from the newest checkpoint in ``output_dir``.
        threads: ``torch.set_num_threads`` for the process (it stays set after the call).
        **options: the fields of :class:`TrainOptions` (epochs, lr, batch_tokens, ...).

    Returns:
        :class:`TrainResult`; the same records are in ``output_dir/log.jsonl``.

    Example:
        >>> loglik.train("pairs.jsonl", model="gpt2", output_dir="out", epochs=2,
        ...              eval_data="heldout.jsonl")                      # doctest: +SKIP
    """
    import torch

    from .tokenize import EncodeOptions
    from .train_dist import shutdown
    from .train_log import Recorder
    from .train_loop import run_epoch
    from .train_setup import prepare

    opts = TrainOptions(**options)
    if threads:
        torch.set_num_threads(threads)
    encode = EncodeOptions(bos=bos, score_eos=score_eos, whitespace=whitespace,
                           truncate=truncate, turns=turns,  # type: ignore[arg-type]
                           end_of_turn=end_of_turn, chat_template=chat_template)
    run = prepare(data, model=model, output_dir=output_dir, eval_data=eval_data,
                  tokenizer=tokenizer, text_field=text_field, block_size=block_size,
                  fields=fields, format=format, encode=encode, resume=resume, device=device,
                  trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                  revision=revision, quiet=quiet, opts=opts)
    rec = Recorder(run)
    result = TrainResult(str(run.out), packed=run.packed)
    result.epochs = rec.epochs
    if run.state is None:
        rec.evaluate_and_log(0, math.nan)   # the starting point, before any update
    run.lm.train()
    autocast = torch.autocast(device_type=torch.device(run.device).type, dtype=torch.bfloat16,
                              enabled=opts.precision == "bf16")

    trained_tokens, train_time = 0, 0.0
    for epoch in range(run.epochs_done, opts.epochs):
        tokens, seconds = run_epoch(run, rec, epoch, eval_data=eval_data, autocast=autocast,
                                    progress=progress, quiet=quiet)
        trained_tokens += tokens
        train_time += seconds
        rec.evaluate_and_log(epoch + 1, tokens / seconds if seconds else math.nan)
        rec.save(epoch + 1)
        run.lm.train()

    rec.save_final()
    shutdown(run.procs)
    result.steps = run.step
    result.tokens_per_s = trained_tokens / train_time if train_time else math.nan
    return result
