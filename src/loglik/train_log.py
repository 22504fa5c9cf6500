"""The record of a training run: ``log.jsonl``, the scorer's evaluations, the checkpoints.

:class:`Recorder` is what the step loop calls to write a step's record, score the training
and held-out data with the scorer itself (the numbers ``loglik score`` prints for that
checkpoint), save a checkpoint (``OUT/checkpoints/step-N``, :mod:`loglik.train_checkpoint`)
and the final model. Only rank 0 writes; under FSDP every process takes part in the scoring
and the gathers, and all wait at a barrier after each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .train_checkpoint import latest_checkpoint, open_log, read_log, save_checkpoint
from .train_setup import Run
from .types import Encoded


class Recorder:
    """``log.jsonl`` (opened for appending after the resumed run's lines), evaluations,
    checkpoints; ``epochs`` holds the log's per-epoch records, old and new."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.log = None
        if run.procs.main:
            self.log = open_log(run.out / "log.jsonl",
                                keep_lines=run.log_lines if run.state is not None else 0)
            if run.state is None:
                self.log.write(json.dumps(run.plan) + "\n")
        self.epochs = [r for r in read_log(run.out / "log.jsonl") if r.get("kind") == "epoch"]

    def write(self, record: dict[str, Any]) -> None:
        if self.log is not None:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()

    def score(self, examples: list[Encoded]) -> dict[str, Any]:
        """The scorer's totals on ``examples`` with the model as it is now."""
        run = self.run
        if run.root is None:
            return evaluate(run.lm, run.tok, examples, run.encode, run.opts.batch_tokens)
        numbers = run.root(lambda m: evaluate(m, run.tok, examples, run.encode,
                                              run.opts.batch_tokens))
        run.root.reshard()          # every process scored; the root's weights sharded again
        return numbers

    def evaluate_and_log(self, epoch: int, rate: float) -> None:
        """After an epoch (0: before the first step): score, write, print."""
        run = self.run
        if run.procs.main or run.root is not None:
            record: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": run.step}
            if run.opts.eval_train:
                record["train"] = self.score(run.train_set)
            if run.eval_set is not None:
                record["eval"] = self.score(run.eval_set)
            record["tokens_per_s"] = rate
        if run.procs.main:
            self.write(record)
            self.epochs.append(record)
            run.say(epoch_line(record, run.opts.epochs))
        self._barrier()

    def evaluate_mid_epoch(self, epoch: int) -> None:
        """The held-out data scored after step ``run.step`` of epoch ``epoch`` (1-based)."""
        run = self.run
        if run.procs.main or run.root is not None:
            record = {"kind": "eval", "epoch": epoch, "step": run.step,
                      "eval": self.score(run.eval_set)}   # type: ignore[arg-type]
            run.lm.train()
        if run.procs.main:
            self.write(record)
            run.say(epoch_line(record, run.opts.epochs))
        self._barrier()

    def save(self, epochs_finished: int) -> None:
        """``checkpoints/step-N`` with everything a resumed run needs."""
        from .train_dist import rng_states
        from .train_fsdp import full_state_dict, optimizer_state

        run = self.run
        rngs = rng_states(run.procs)     # every process takes part in the gathers
        weights = full_state_dict(run.net, run.procs.main) if run.root is not None else None
        optim = optimizer_state(run.root, run.optimizer) if run.root is not None else None
        if run.procs.main:
            save_checkpoint(run.ckpt_dir, run.net, run.tok, step=run.step,
                            epochs_done=epochs_finished, optimizer=run.optimizer,
                            scheduler=run.scheduler, log=self.log, options=run.opts,
                            total_steps=run.total_steps, keep=run.opts.keep_checkpoints,
                            plan_version=run.plan_version, packed=run.packed,
                            world_size=run.procs.world, rank_rng=rngs, weights=weights,
                            optimizer_state=optim, sharded=run.root is not None)
        self._barrier()

    def save_final(self) -> None:
        """The final model in ``OUT`` (the adapter, or the merged model, with LoRA)."""
        from .train_fsdp import full_state_dict
        from .train_lora import save_lora

        run = self.run
        run.lm.eval()
        weights = full_state_dict(run.net, run.procs.main) if run.root is not None else None
        if run.procs.main:
            if run.opts.lora:
                save_lora(run.net, run.tok, run.out, merge=run.opts.merge)
            else:
                run.net.save_pretrained(run.out, state_dict=weights)
                run.tok.save_pretrained(run.out)
            self.log.close()   # type: ignore[union-attr]
        self._barrier()

    def _barrier(self) -> None:
        from .train_dist import barrier

        barrier(self.run.procs)


def evaluate(model: Any, tokenizer: Any, encoded: list[Encoded], encode: Any,
             batch_tokens: int) -> dict[str, Any]:
    """Score ``encoded`` with the scorer (what ``loglik score`` prints): totals and means."""
    from .metrics import corpus_stats
    from .scorer import Scorer

    make = (Scorer.from_seq2seq if getattr(model.config, "is_encoder_decoder", False)
            else Scorer.from_hf)
    scorer = make(model, tokenizer, bos=encode.bos, score_eos=encode.score_eos,
                  whitespace=encode.whitespace, truncate=encode.truncate,
                  batch_tokens=batch_tokens)
    stats = corpus_stats(scorer.score_encoded(encoded))
    return {"logprob": stats.total_logprob, "num_examples": stats.num_examples,
            "num_tokens": stats.num_tokens, "logprob_per_token": stats.logprob_per_token,
            "perplexity": stats.perplexity}


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """An epoch's (or a mid-epoch evaluation's) record as the line printed to stderr."""
    parts = [f"epoch {record['epoch']}/{epochs}"]
    if record["kind"] == "eval":
        parts.append(f"step {record['step']}")
    for name in ("train", "eval"):
        if name in record:
            r = record[name]
            parts.append(f"{name} logprob {r['logprob']:.2f} ({r['logprob_per_token']:.4f}/token, "
                         f"ppl {r['perplexity']:.3f})")
    if not math.isnan(record.get("tokens_per_s", math.nan)):
        parts.append(f"{record['tokens_per_s']:.0f} tokens/s")
    return "  ".join(parts)


def interrupted_message(output_dir: str) -> str:
    """What an interrupted run left in ``output_dir``: its newest checkpoint, if any."""
    latest = latest_checkpoint(Path(output_dir) / "checkpoints")
    if latest is None:
        return (f"interrupted before the first checkpoint; {output_dir} has nothing to resume "
                "from (checkpoints come after every epoch, or every --save-every steps): "
                "rerun without --resume")
    return (f"interrupted; the newest checkpoint is {latest} (after step "
            f"{int(latest.name.split('-', 1)[1])}); rerun with --resume to continue from it")
