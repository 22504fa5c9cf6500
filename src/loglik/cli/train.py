"""``loglik train DATA --model M_OR_CONFIG -o OUT_DIR``: maximise sum log Pr(y | x)."""

from __future__ import annotations

import argparse

from .common import add_data_options, add_encode_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="fine-tune or pre-train a language model on the conditional "
        "log-likelihood",
        description="Fine-tune a causal LM on prompt/response records (only response tokens "
        "are trained on), or pre-train one from a config on plain text (a .txt file with "
        "documents separated by blank lines, or records with --text-field). An encoder-decoder "
        "model (T5, BART) trains on prompt/response records: the prompt to the encoder, the "
        "response to the decoder (padded rows, no packing). After every epoch "
        "the training and --eval data are scored exactly as 'loglik score' would; the results "
        "go to stderr and OUT_DIR/log.jsonl, checkpoints to OUT_DIR/checkpoints, the final "
        "model to OUT_DIR.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("--model", required=True, metavar="M_OR_CONFIG",
                   help="model folder or hub id to fine-tune, or a config.json (or a folder "
                   "with a config and no weights) to pre-train from scratch")
    p.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="tokenizer folder (needed with a config that has none beside it)")
    p.add_argument("-o", "--output-dir", required=True, metavar="OUT_DIR",
                   help="where the final model, log.jsonl and checkpoints/ go")
    p.add_argument("--eval", dest="eval_data", default=None, metavar="DATA",
                   help="held-out data of the same kind, scored after every epoch")
    p.add_argument("--text-field", default=None,
                   help="train on plain text from this record field (every token a response "
                   "token); .txt files are plain text without it")
    p.add_argument("--block-size", type=int, default=None,
                   help="plain text: response tokens per block (default: the model's context "
                   "minus one, at most 1024)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training data")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW)")
    p.add_argument("--batch-tokens", type=int, default=8192,
                   help="padded tokens per micro-batch (default 8192)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per micro-batch (default: max(8, N / (100 x grad-accum x "
                   "processes)) for N training examples, so an epoch has about 100 optimiser "
                   "steps, or as many as the data allow with 8 examples per micro-batch; "
                   "--batch-tokens caps it too, whichever is smaller). The plan is printed "
                   "at the start, with a warning under 20 steps")
    p.add_argument("--pack", action=argparse.BooleanOptionalAction, default=True,
                   help="put several examples in one row (block-diagonal mask, positions "
                   "restarting per example) instead of padding each to the longest; models "
                   "that cannot take that mask are trained padded (default: yes)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimiser step")
    p.add_argument("--lora", type=int, default=0, metavar="R",
                   help="train rank-R LoRA adapters (peft: pip install 'loglik[lora]') instead "
                   "of every weight; OUT_DIR gets the adapter, scored with 'loglik score "
                   "--model BASE --adapter OUT_DIR'")
    p.add_argument("--lora-alpha", type=float, default=None,
                   help="LoRA scale numerator, alpha / R (default 2 x R)")
    p.add_argument("--lora-targets", default=None, metavar="NAMES",
                   help="comma-separated module names to adapt, e.g. q_proj,v_proj (default: "
                   "all-linear, every linear layer but the output head)")
    p.add_argument("--merge", action="store_true",
                   help="with --lora: write the merged model to OUT_DIR (the adapter to "
                   "OUT_DIR/adapter)")
    p.add_argument("--warmup", type=float, default=0.05,
                   help="warmup: a fraction of all steps (< 1) or a number of steps")
    p.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="the cosine schedule ends at lr x this")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="AdamW weight decay (not applied to biases and norms)")
    p.add_argument("--clip", type=float, default=1.0, help="max gradient norm (0: off)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the initial weights (pre-training) and the batch order")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="fp32, or bf16 autocast (weights stay fp32)")
    p.add_argument("--save-every", type=int, default=0,
                   help="also checkpoint every N steps (default: after every epoch only)")
    p.add_argument("--keep-checkpoints", type=int, default=2,
                   help="newest checkpoints kept in OUT_DIR/checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="log a step record every N steps")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also score the --eval data every N steps (default: after every epoch "
                   "only)")
    p.add_argument("--eval-train", action=argparse.BooleanOptionalAction, default=True,
                   help="score the training data after every epoch (default: yes)")
    p.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun / accelerate launch: shard weights, gradients and "
                   "AdamW state over the processes with PyTorch FSDP2 (fully_shard, one unit "
                   "per transformer block) instead of replicating the model on each; the "
                   "weights and the loss are the same. Default: automatic, on with several "
                   "CUDA processes when the training state (16 bytes a parameter) exceeds "
                   "half of one GPU's memory, off on CPU and with --lora. Checkpoints hold "
                   "full state dicts (written by rank 0); --resume needs the same choice")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in OUT_DIR")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--revision", default=None, help="model revision on the hub")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (off by default)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickle (.bin) weights; safetensors only by default")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar on stderr (default: when stderr is a terminal)")
    add_data_options(p)
    add_encode_options(p)
    p.set_defaults(turns="all")   # conversations: train on every assistant turn
    for action in p._actions:
        if action.dest == "turns":
            action.help = ("conversations (messages records): train on every assistant "
                           "message (default) or the last one only")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import math
    import os

    from ..trainer import interrupted_message, train
    from .common import fields_from_args

    try:
        result = _train(train, args, fields_from_args(args))
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(args.output_dir)) from None
    if int(os.environ.get("RANK", "0")) != 0:   # under torchrun only rank 0 reports
        return 0
    if math.isnan(result.tokens_per_s):    # --resume of a finished run: nothing was trained
        print(f"nothing left to train: {result.output_dir} already has all {args.epochs} "
              f"epochs ({result.steps} steps); the model is there (log: "
              f"{result.output_dir}/log.jsonl)")
    else:
        print(f"trained {result.steps} steps at {result.tokens_per_s:.0f} tokens/s; model "
              f"saved to {result.output_dir} (log: {result.output_dir}/log.jsonl)")
    return 0


def _train(train, args: argparse.Namespace, fields):
    from .common import read_chat_template

    return train(
        args.data, model=args.model, output_dir=args.output_dir, eval_data=args.eval_data,
        tokenizer=args.tokenizer, text_field=args.text_field, block_size=args.block_size,
        fields=fields, format=args.format, bos=args.bos,
        score_eos=args.score_eos, whitespace=args.whitespace, truncate=args.truncate,
        turns=args.turns, end_of_turn=args.end_of_turn,
        chat_template=read_chat_template(args.chat_template), resume=args.resume, device=args.device, threads=args.threads,
        trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
        revision=args.revision, progress=args.progress, epochs=args.epochs, lr=args.lr,
        batch_tokens=args.batch_tokens, batch_size=args.batch_size, pack=args.pack,
        lora=args.lora, lora_alpha=args.lora_alpha, lora_targets=args.lora_targets,
        merge=args.merge, grad_accum=args.grad_accum, warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio, weight_decay=args.weight_decay, clip=args.clip,
        seed=args.seed, precision=args.precision, save_every=args.save_every,
        keep_checkpoints=args.keep_checkpoints, log_every=args.log_every,
        eval_every=args.eval_every, eval_train=args.eval_train, fsdp=args.fsdp)
