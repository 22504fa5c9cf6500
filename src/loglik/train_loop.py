"""The step loop of a training run: one epoch of optimiser steps, top to bottom.

Per optimiser step: take this process's ``grad_accum`` micro-batches (packed rows when the
run packs), compute :func:`loglik.objective.response_nll` with ``token_mean`` over the whole
step (every process's response tokens), backward, sum the gradients over the processes
(under ``torchrun``; FSDP reduce-scatters them itself), clip, AdamW step, schedule step,
log every ``log_every`` steps; score the held-out data every ``eval_every`` steps and save
every ``save_every`` steps (:class:`loglik.train_log.Recorder`). A nan or inf loss or
gradient norm stops the run without saving (:class:`loglik.errors.TrainingError`).
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

from .errors import TrainingError
from .train_checkpoint import latest_checkpoint
from .train_log import Recorder
from .train_setup import Run
from .types import Encoded


def run_epoch(run: Run, rec: Recorder, epoch: int, *, eval_data: Any, autocast: Any,
              progress: bool | None, quiet: bool) -> tuple[int, float]:
    """Epoch ``epoch`` (0-based) from ``run.step`` on; its trained tokens and seconds."""
    import torch

    from .objective import response_nll
    from .progress import Progress
    from .train_data import row_length
    from .train_dist import sum_floats, sum_gradients
    from .train_fsdp import grad_norm, micro_batches

    opts, procs, root, train_set = run.opts, run.procs, run.root, run.train_set
    steps = run.plans[epoch]
    first = run.step - run.epoch_starts[epoch]          # steps of this epoch already done
    epoch_tokens, epoch_time = 0, 0.0
    with Progress(f"epoch {epoch + 1}/{opts.epochs}", total=len(steps),
                  enabled=False if quiet or not procs.main else progress) as bar:
        bar.advance(first)
        for batches in steps[first:]:
            t0 = time.perf_counter()
            # the divisor: response tokens of the whole step, every process's share
            num_tokens = sum(train_set[i].num_tokens for b in batches for i in b)
            step_nll, step_tokens, bad = 0.0, 0, None
            mine = micro_batches(batches, procs.rank, procs.world)  # data sharded by rank
            if root is None:      # DDP-style: a process may sit a step's tail out
                mine = [m for m in mine if m[1]]
            for n, (indices, counts) in enumerate(mine):
                examples = [train_set[i] for i in indices]
                nll = partial(response_nll, batch=collate(run, examples),
                              reduction="token_mean", num_items_in_batch=num_tokens)
                with autocast:   # FSDP: inside the root unit, which gathers its weights
                    loss, _ = root(nll) if root is not None else nll(run.lm)
                if counts and not torch.isfinite(loss) and bad is None:
                    bad = diverged(loss, run.step + 1, epoch + 1, n + 1, examples, run.ckpt_dir)
                    if procs.world == 1:
                        raise bad
                    if root is None:
                        break
                if root is not None:   # gradients reduce-scattered after the last one
                    root.set_requires_gradient_sync(n == len(mine) - 1)
                (loss if counts else loss * 0.0).backward()   # FSDP: every process runs
                if counts:
                    step_nll += loss.item()
                    step_tokens += sum(row_length(e) for e in examples)
            step_nll, step_tokens, failed = sum_floats(
                [step_nll, step_tokens, float(bad is not None)], procs, run.device)
            if failed:
                raise bad or TrainingError(
                    f"another process's loss became nan or inf at step {run.step + 1} (epoch "
                    f"{epoch + 1}); stopped without saving; see rank 0's message")
            if root is None:
                sum_gradients(run.params, procs)
            # The norm is computed even without clipping: an inf/nan gradient stops the run.
            norm = grad_norm(run.params, opts.clip)
            if not math.isfinite(norm):
                raise diverged(torch.tensor(norm), run.step + 1, epoch + 1, len(batches),
                               [train_set[i] for b in batches for i in b], run.ckpt_dir,
                               what="gradient norm")
            run.optimizer.step()
            run.scheduler.step()
            run.optimizer.zero_grad(set_to_none=True)
            run.step += 1
            epoch_tokens += int(step_tokens)
            epoch_time += time.perf_counter() - t0
            bar.advance()
            if run.step % opts.log_every == 0:
                rec.write({"kind": "step", "epoch": epoch + 1, "step": run.step,
                           "lr": run.scheduler.get_last_lr()[0], "nll_token_mean": step_nll,
                           "grad_norm": norm, "tokens_per_s": epoch_tokens / epoch_time})
            mid_epoch = run.step < run.epoch_starts[epoch + 1]
            if eval_data and opts.eval_every and run.step % opts.eval_every == 0 and mid_epoch:
                rec.evaluate_mid_epoch(epoch + 1)
            if opts.save_every and run.step % opts.save_every == 0 and mid_epoch:
                rec.save(epoch)
    return epoch_tokens, epoch_time


def collate(run: Run, examples: list[Encoded]) -> dict[str, Any]:
    """A micro-batch as the objective takes it: packed rows, right-padded rows, or an
    encoder-decoder batch (prompt to the encoder, response to the decoder)."""
    from .objective import collate as padded, collate_seq2seq
    from .train_packing import collate_packed

    if run.seq2seq:
        config = run.lm.config
        pad = config.pad_token_id if config.pad_token_id is not None else 0
        return collate_seq2seq(examples, start_id=config.decoder_start_token_id, pad_id=pad)
    return collate_packed(examples) if run.packed else padded(examples)


def diverged(loss: Any, step: int, epoch: int, micro: int, examples: list[Encoded],
             ckpt_dir: Path, what: str = "loss") -> TrainingError:
    """The error that stops a run whose loss (or gradient norm) is nan or inf."""
    last = latest_checkpoint(ckpt_dir)
    kept = (f"the last good checkpoint is {last} (continue from it with --resume)" if last
            else "no checkpoint was written yet")
    return TrainingError(
        f"the {what} became {loss.item()} at step {step} (epoch {epoch}, micro-batch {micro} of "
        f"the step, {len(examples)} examples, {sum(e.num_tokens for e in examples)} response "
        f"tokens); stopped without saving; {kept}. Lower --lr, keep --clip on, or train in fp32")
