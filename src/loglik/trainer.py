"""``loglik.train``: fine-tune or pre-train a causal LM by maximising sum log Pr(y | x).

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

(The module is ``trainer`` rather than ``train`` so that ``loglik.train`` stays the function.)
"""

from __future__ import annotations

import json
import math
from functools import partial
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Fields
from .errors import ConfigError, InputError, TrainingError
from .train_checkpoint import (STATE_FILE, check_resume, check_sharding, check_steps,
                               latest_checkpoint, open_log, read_log, save_checkpoint)
from .train_fsdp import check_fsdp
from .train_model import load_model
from .types import Encoded

#: Fewer optimiser steps than this in a whole run draw a warning: the model barely moves.
FEW_STEPS = 20


@dataclass(frozen=True)
class TrainOptions:
    """The optimisation settings; every field is a keyword of :func:`train` and a CLI flag."""

    epochs: int = 1
    lr: float = 3e-4
    batch_tokens: int = 8192      # tokens per micro-batch (padded tokens when not packed)
    batch_size: int | None = None  # examples per micro-batch; None: auto_batch_size
    grad_accum: int = 1
    warmup: float = 0.05          # fraction of all steps (< 1) or a number of steps (>= 1)
    min_lr_ratio: float = 0.1     # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    clip: float = 1.0             # max gradient norm; 0 = no clipping
    seed: int = 0
    precision: str = "fp32"       # "fp32" or "bf16" (autocast; weights stay fp32)
    pack: bool = True             # several examples per row when the model takes a 4D mask
    lora: int = 0                 # LoRA rank; 0 = train every weight
    lora_alpha: float | None = None   # LoRA scale numerator (default 2 x rank)
    lora_targets: str | None = None   # comma-separated module names (default all-linear)
    merge: bool = False           # with lora: write the merged model to OUT
    save_every: int = 0           # also checkpoint every N steps (0: at the end of epochs only)
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0           # also score the held-out data every N steps (0: per epoch)
    eval_train: bool = True       # score the training data after every epoch
    fsdp: bool | None = None      # shard with FSDP2 under a launcher; None: when it must

    def __post_init__(self) -> None:
        rules = [("epochs", ">= 1", self.epochs >= 1), ("lr", "> 0", self.lr > 0),
                 ("batch_tokens", ">= 1", self.batch_tokens >= 1),
                 ("batch_size", ">= 1", self.batch_size is None or self.batch_size >= 1),
                 ("grad_accum", ">= 1", self.grad_accum >= 1),
                 ("warmup", ">= 0", self.warmup >= 0),
                 ("min_lr_ratio", "in [0, 1]", 0 <= self.min_lr_ratio <= 1),
                 ("weight_decay", ">= 0", self.weight_decay >= 0),
                 ("clip", ">= 0", self.clip >= 0), ("save_every", ">= 0", self.save_every >= 0),
                 ("lora", ">= 0", self.lora >= 0),
                 ("lora_alpha", "> 0", self.lora_alpha is None or self.lora_alpha > 0),
                 ("keep_checkpoints", ">= 1", self.keep_checkpoints >= 1),
                 ("log_every", ">= 1", self.log_every >= 1),
                 ("eval_every", ">= 0", self.eval_every >= 0)]
        for name, rule, ok in rules:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name} ({flag}) must be {rule}, got {getattr(self, name)!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.lora and self.fsdp:
            check_fsdp(self.lora)
        if not self.lora and (self.merge or self.lora_alpha is not None or self.lora_targets):
            raise ConfigError("--merge, --lora-alpha and --lora-targets go with --lora R "
                              "(the adapters' rank); add --lora 8, say, or leave them out")


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

    from .backends.hf import context_length
    from .objective import response_nll
    from .progress import Progress
    from .tokenize import EncodeOptions, Encoder
    from .train_data import (PLAN_VERSION, auto_batch_size, load_examples, plan_epoch,
                             plan_line, plan_record, row_length, steps_of)
    from .train_dist import (barrier, broadcast_weights, init_processes, rng_states, shutdown,
                             sum_floats, sum_gradients)
    from .train_fsdp import (full_state_dict, grad_norm, load_optimizer_state,
                             micro_batches, optimizer_state, shard, use_fsdp)
    from .train_lora import add_lora, resume_lora, save_lora, trainable_model
    from .train_packing import collate_packed, packing_trains

    opts = TrainOptions(**options)
    if threads:
        torch.set_num_threads(threads)
    procs, device = init_processes(device)
    say = (lambda msg: print(msg, file=sys.stderr, flush=True)) if procs.main and not quiet \
        else (lambda msg: None)
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    last = latest_checkpoint(ckpt_dir) if resume else None
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ConfigError(f"{out} already holds checkpoints; pass resume=True (--resume) to "
                          "continue that run, or choose another output folder")
    barrier(procs)              # every process has looked before rank 0 writes
    if procs.main:
        out.mkdir(parents=True, exist_ok=True)
    state = torch.load(last / STATE_FILE, weights_only=False) if last is not None else None
    if state is not None:
        check_resume(state, opts, last, world_size=procs.world)

    # -- model, tokenizer, data ---------------------------------------------------------
    torch.manual_seed(opts.seed)
    source = str(last) if last is not None and not opts.lora else model
    net, tok = load_model(source, tokenizer=tokenizer, device=device,
                          trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                          revision=revision)
    if opts.lora:   # only the adapters train; the objective and scorer see the HF model
        net = resume_lora(net, last) if last is not None else add_lora(
            net, rank=opts.lora, alpha=opts.lora_alpha, targets=opts.lora_targets)
    lm = trainable_model(net)
    sharded = use_fsdp(False if opts.lora else opts.fsdp, net, device, procs.world)
    if state is not None:
        check_sharding(state, sharded, last)
    if opts.fsdp and procs.world == 1:
        say("note: --fsdp shards over the processes of torchrun / accelerate launch; this is "
            "one process, trained unsharded")
    broadcast_weights(net, procs)
    if procs.world > 1:         # same weights everywhere, a dropout stream per process
        torch.manual_seed(opts.seed + procs.rank)
    encode = EncodeOptions(bos=bos, score_eos=score_eos, whitespace=whitespace,
                           truncate=truncate, turns=turns,  # type: ignore[arg-type]
                           end_of_turn=end_of_turn, chat_template=chat_template)
    encoder = Encoder(tok, encode, max_length=context_length(lm.config))
    read = dict(text_field=text_field, fields=fields, fmt=format, block_size=block_size)
    train_set = _nonempty(load_examples(data, encoder, **read), data)
    eval_set = (_nonempty(load_examples(eval_data, encoder, **read), eval_data)
                if eval_data and (procs.main or sharded) else None)

    # -- the plan: micro-batches per optimiser step, every epoch --------------------------
    plan_version = state.get("plan_version", 1) if state is not None else PLAN_VERSION
    if state is not None:
        packed = bool(state.get("packed", False))
    else:
        packed = opts.pack and packing_trains(lm)
    batch_size = opts.batch_size or auto_batch_size(len(train_set), grad_accum=opts.grad_accum,
                                                    processes=procs.world)
    per_step = opts.grad_accum * procs.world          # micro-batches of one optimiser step
    plans = [steps_of(plan_epoch(train_set, opts.batch_tokens, seed=opts.seed, epoch=e,
                                 version=plan_version, batch_size=batch_size, pack=packed),
                      per_step) for e in range(opts.epochs)]
    epoch_starts = [sum(len(p) for p in plans[:e]) for e in range(opts.epochs + 1)]
    total_steps = epoch_starts[-1]
    if state is not None:
        check_steps(state, total_steps, last)
    plan = plan_record(train_set, plans, opts, batch_size=batch_size, packed=packed,
                       processes=procs.world)
    if state is None:
        say(plan_line(plan))
        if total_steps < FEW_STEPS:
            say(f"warning: only {total_steps} optimiser steps in all, too few for the model to "
                "learn much; pass a smaller --batch-size or --batch-tokens, or more --epochs")

    # -- optimiser and schedule (after sharding: AdamW keeps each process's shard) ---------
    root = shard(net) if sharded else None
    params = [p for p in net.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr)
    warmup = opts.warmup * total_steps if opts.warmup < 1 else opts.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, opts.min_lr_ratio))

    step, epochs_done, log_lines = 0, 0, 0
    if state is not None:
        if root is not None:
            load_optimizer_state(root, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        rank_rng = state.get("rank_rng")
        torch.set_rng_state(rank_rng[procs.rank] if rank_rng else state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, epochs_done, log_lines = state["step"], state["epochs_done"], state["log_lines"]
    log = None
    if procs.main:
        log = open_log(out / "log.jsonl", keep_lines=log_lines if state is not None else 0)
        if state is None:
            log.write(json.dumps(plan) + "\n")
    result = TrainResult(str(out), packed=packed)
    result.epochs = [r for r in read_log(out / "log.jsonl") if r.get("kind") == "epoch"]

    def write(record: dict[str, Any]) -> None:
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()

    def score(examples: list[Encoded]) -> dict[str, Any]:
        if root is None:
            return evaluate(lm, tok, examples, encode, opts.batch_tokens)
        numbers = root(lambda m: evaluate(m, tok, examples, encode, opts.batch_tokens))
        root.reshard()             # every process scored; the root's weights sharded again
        return numbers

    def evaluate_and_log(epoch: int, rate: float) -> None:
        if procs.main or root is not None:
            record: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": step}
            if opts.eval_train:
                record["train"] = score(train_set)
            if eval_set is not None:
                record["eval"] = score(eval_set)
            record["tokens_per_s"] = rate
        if procs.main:
            write(record)
            result.epochs.append(record)
            say(_epoch_line(record, opts.epochs))
        barrier(procs)

    def save(epochs_finished: int) -> None:
        rngs = rng_states(procs)     # every process takes part in the gathers
        weights = full_state_dict(net, procs.main) if root is not None else None
        optim = optimizer_state(root, optimizer) if root is not None else None
        if procs.main:
            save_checkpoint(ckpt_dir, net, tok, step=step, epochs_done=epochs_finished,
                            optimizer=optimizer, scheduler=scheduler, log=log, options=opts,
                            total_steps=total_steps, keep=opts.keep_checkpoints,
                            plan_version=plan_version, packed=packed, world_size=procs.world,
                            rank_rng=rngs, weights=weights, optimizer_state=optim,
                            sharded=root is not None)
        barrier(procs)

    def collate(examples: list[Encoded]) -> dict[str, Any]:
        from .objective import collate as padded

        return collate_packed(examples) if packed else padded(examples)

    if state is None:
        evaluate_and_log(0, math.nan)   # the starting point, before any update
    lm.train()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=opts.precision == "bf16")

    # -- the loop -----------------------------------------------------------------------
    trained_tokens, train_time = 0, 0.0
    for epoch in range(epochs_done, opts.epochs):
        steps = plans[epoch]
        first = step - epoch_starts[epoch]              # steps of this epoch already done
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
                    nll = partial(response_nll, batch=collate(examples), reduction="token_mean",
                                  num_items_in_batch=num_tokens)
                    with autocast:   # FSDP: inside the root unit, which gathers its weights
                        loss, _ = root(nll) if root is not None else nll(lm)
                    if counts and not torch.isfinite(loss) and bad is None:
                        bad = _diverged(loss, step + 1, epoch + 1, n + 1, examples, ckpt_dir)
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
                    [step_nll, step_tokens, float(bad is not None)], procs, device)
                if failed:
                    raise bad or TrainingError(
                        f"another process's loss became nan or inf at step {step + 1} (epoch "
                        f"{epoch + 1}); stopped without saving; see rank 0's message")
                if root is None:
                    sum_gradients(params, procs)
                # The norm is computed even without clipping: an inf/nan gradient stops the run.
                norm = grad_norm(params, opts.clip)
                if not math.isfinite(norm):
                    raise _diverged(torch.tensor(norm), step + 1, epoch + 1, len(batches),
                                    [train_set[i] for b in batches for i in b], ckpt_dir,
                                    what="gradient norm")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                epoch_tokens += int(step_tokens)
                epoch_time += time.perf_counter() - t0
                bar.advance()
                if step % opts.log_every == 0:
                    write({"kind": "step", "epoch": epoch + 1, "step": step,
                           "lr": scheduler.get_last_lr()[0], "nll_token_mean": step_nll,
                           "grad_norm": norm, "tokens_per_s": epoch_tokens / epoch_time})
                mid_epoch = step < epoch_starts[epoch + 1]
                if eval_data and opts.eval_every and step % opts.eval_every == 0 and mid_epoch:
                    if procs.main or root is not None:
                        record = {"kind": "eval", "epoch": epoch + 1, "step": step,
                                  "eval": score(eval_set)}
                        lm.train()
                    if procs.main:
                        write(record)
                        say(_epoch_line(record, opts.epochs))
                    barrier(procs)
                if opts.save_every and step % opts.save_every == 0 and mid_epoch:
                    save(epoch)
        trained_tokens += epoch_tokens
        train_time += epoch_time
        evaluate_and_log(epoch + 1, epoch_tokens / epoch_time if epoch_time else math.nan)
        save(epoch + 1)
        lm.train()

    # -- the final model ----------------------------------------------------------------
    lm.eval()
    weights = full_state_dict(net, procs.main) if root is not None else None
    if procs.main:
        if opts.lora:
            save_lora(net, tok, out, merge=opts.merge)
        else:
            net.save_pretrained(out, state_dict=weights)
            tok.save_pretrained(out)
        log.close()
    barrier(procs)
    shutdown(procs)
    result.steps = step
    result.tokens_per_s = trained_tokens / train_time if train_time else math.nan
    return result


# ---------------------------------------------------------------------------------------
def lr_factor(step: int, warmup: float, total: int, min_ratio: float) -> float:
    """Linear warmup from 0 to 1 over ``warmup`` steps, then cosine down to ``min_ratio``.

    >>> [round(lr_factor(s, 2, 10, 0.1), 3) for s in (0, 1, 2, 6, 10)]
    [0.333, 0.667, 1.0, 0.55, 0.1]
    """
    if step < warmup:
        return (step + 1) / (warmup + 1) if warmup >= 1 else 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def evaluate(model: Any, tokenizer: Any, encoded: list[Encoded], encode: Any,
             batch_tokens: int) -> dict[str, Any]:
    """Score ``encoded`` with the scorer (what ``loglik score`` prints): totals and means."""
    from .metrics import corpus_stats
    from .scorer import Scorer

    scorer = Scorer.from_hf(model, tokenizer, bos=encode.bos, score_eos=encode.score_eos,
                            whitespace=encode.whitespace, truncate=encode.truncate,
                            batch_tokens=batch_tokens)
    stats = corpus_stats(scorer.score_encoded(encoded))
    return {"logprob": stats.total_logprob, "num_examples": stats.num_examples,
            "num_tokens": stats.num_tokens, "logprob_per_token": stats.logprob_per_token,
            "perplexity": stats.perplexity}


def _nonempty(encoded: list[Encoded], path: str) -> list[Encoded]:
    if not any(e.response_ids for e in encoded):
        raise InputError("no response tokens to train on (every response is empty)", source=path)
    return encoded


def _diverged(loss: Any, step: int, epoch: int, micro: int, examples: list[Encoded],
              ckpt_dir: Path, what: str = "loss") -> TrainingError:
    last = latest_checkpoint(ckpt_dir)
    kept = (f"the last good checkpoint is {last} (continue from it with --resume)" if last
            else "no checkpoint was written yet")
    return TrainingError(
        f"the {what} became {loss.item()} at step {step} (epoch {epoch}, micro-batch {micro} of "
        f"the step, {len(examples)} examples, {sum(e.num_tokens for e in examples)} response "
        f"tokens); stopped without saving; {kept}. Lower --lr, keep --clip on, or train in fp32")


def _epoch_line(record: dict[str, Any], epochs: int) -> str:
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
