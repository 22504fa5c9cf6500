"""The start of a training run: options, model, data, the plan of every epoch, the optimiser.

:func:`prepare` does, in order, what :func:`loglik.train` does before its first step: join
the launcher's processes, look for a checkpoint to resume, load the model (LoRA adapters if
asked; FSDP shards when it must), encode the data with the scorer's encoder, plan the
epochs' micro-batches (packed rows when the model passes the packing check), build AdamW and
the warmup + cosine schedule, and restore their state when resuming. It returns a
:class:`Run`, the state the step loop (:mod:`loglik.train_loop`) and the log
(:mod:`loglik.train_log`) share.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data import Fields
from .errors import ConfigError, InputError
from .train_checkpoint import (STATE_FILE, check_resume, check_sharding, check_steps,
                               latest_checkpoint)
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
class Run:
    """A prepared run: what the step loop, the evaluations and the checkpoints share."""

    opts: TrainOptions
    procs: Any                    # loglik.train_dist.Processes
    device: str
    say: Callable[[str], None]    # a line to stderr on rank 0 (nothing when quiet)
    out: Path
    ckpt_dir: Path
    last: Path | None             # the checkpoint resumed from
    state: dict[str, Any] | None  # its trainer_state.pt
    net: Any                      # the model (a PeftModel with LoRA)
    lm: Any                       # the transformers model the objective and scorer see
    tok: Any
    encode: Any                   # loglik.tokenize.EncodeOptions
    train_set: list[Encoded]
    eval_set: list[Encoded] | None
    root: Any                     # the FSDP root unit, or None when unsharded
    plan_version: int
    packed: bool
    batch_size: int
    plans: list[list[list[tuple[int, ...]]]]   # epoch -> optimiser step -> micro-batches
    epoch_starts: list[int]       # optimiser steps before each epoch (and the total last)
    plan: dict[str, Any]          # the log's first record (loglik.train_data.plan_record)
    params: list[Any]
    optimizer: Any
    scheduler: Any
    step: int = 0
    epochs_done: int = 0
    log_lines: int = 0

    @property
    def total_steps(self) -> int:
        return self.epoch_starts[-1]

    @property
    def seq2seq(self) -> bool:
        return is_seq2seq(self.lm)


def prepare(data: str, *, model: Any, output_dir: str, eval_data: str | None,
            tokenizer: Any, text_field: str | None, block_size: int | None, fields: Fields,
            format: str | None, encode: Any, resume: bool, device: str,
            trust_remote_code: bool, allow_pickle: bool, revision: str | None, quiet: bool,
            opts: TrainOptions) -> Run:
    """Everything before the first step (module docstring); ``encode``: EncodeOptions."""
    import torch

    from .train_data import (PLAN_VERSION, auto_batch_size, load_examples, plan_epoch,
                             plan_line, plan_record, steps_of)
    from .train_dist import barrier, broadcast_weights, init_processes
    from .train_fsdp import load_optimizer_state, shard, use_fsdp
    from .train_lora import add_lora, resume_lora, trainable_model
    from .train_packing import packing_trains

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
    encoder = _encoder(lm, tok, encode, data, text_field)
    read = dict(text_field=text_field, fields=fields, fmt=format, block_size=block_size)
    train_set = _nonempty(load_examples(data, encoder, **read), data)
    eval_set = (_nonempty(load_examples(eval_data, encoder, **read), eval_data)
                if eval_data and (procs.main or sharded) else None)

    # -- the plan: micro-batches per optimiser step, every epoch --------------------------
    plan_version = state.get("plan_version", 1) if state is not None else PLAN_VERSION
    if state is not None:
        packed = bool(state.get("packed", False))
    elif is_seq2seq(lm):
        packed = False
        if opts.pack and state is None:
            say("note: an encoder-decoder model trains on padded rows (packing is for causal "
                "models)")
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

    run = Run(opts=opts, procs=procs, device=device, say=say, out=out, ckpt_dir=ckpt_dir,
              last=last, state=state, net=net, lm=lm, tok=tok, encode=encode,
              train_set=train_set, eval_set=eval_set, root=root, plan_version=plan_version,
              packed=packed, batch_size=batch_size, plans=plans, epoch_starts=epoch_starts,
              plan=plan, params=params, optimizer=optimizer, scheduler=scheduler)
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
        run.step, run.epochs_done = state["step"], state["epochs_done"]
        run.log_lines = state["log_lines"]
    return run


def is_seq2seq(model: Any) -> bool:
    """An encoder-decoder model (T5, BART): its config says ``is_encoder_decoder``."""
    return bool(getattr(model.config, "is_encoder_decoder", False))


def _encoder(lm: Any, tok: Any, encode: Any, data: str, text_field: str | None) -> Any:
    """The scorer's encoder for this model: prompt/boundary rules, context length."""
    from .backends.hf import context_length
    from .tokenize import Encoder
    from .tokenize_seq2seq import Seq2SeqEncoder
    from .train_data import is_text_input

    if not is_seq2seq(lm):
        return Encoder(tok, encode, max_length=context_length(lm.config))
    if is_text_input(data, text_field):
        raise ConfigError(f"{data}: plain text (a .txt file or --text-field) pre-trains a "
                          "causal model; an encoder-decoder model trains on prompt/response "
                          "records (the prompt to the encoder, the response to the decoder)")
    # each side reads at most max_position_embeddings (None for T5's relative positions)
    return Seq2SeqEncoder(tok, encode, getattr(lm.config, "max_position_embeddings", None))


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


def _nonempty(encoded: list[Encoded], path: str) -> list[Encoded]:
    if not any(e.response_ids for e in encoded):
        raise InputError("no response tokens to train on (every response is empty)", source=path)
    return encoded
