"""``loglik.train``: fine-tune or pre-train a causal LM by maximising sum log Pr(y | x).

Read it top to bottom (no callbacks): load the model and data, then per optimiser step take
``grad_accum`` token-budget batches, compute :func:`loglik.objective.response_nll` with
``token_mean`` over the whole step, backward, clip, AdamW step, warmup + cosine schedule,
log. After every epoch the model is scored with the scorer itself on the training and
held-out data (the numbers ``loglik score`` prints for that checkpoint), logged, and saved.

Output folder::

    OUT/                     the final model (save_pretrained: safetensors + tokenizer)
    OUT/log.jsonl            one record per logged step ("kind": "step") and per epoch ("epoch")
    OUT/checkpoints/step-N/  save_pretrained folder + trainer_state.pt (optimiser, schedule,
                             RNG, log length); the newest ``keep_checkpoints`` are kept

(The module is ``trainer`` rather than ``train`` so that ``loglik.train`` stays the function.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .data import Fields
from .errors import ConfigError, InputError, ModelLoadError, TrainingError
from .types import Encoded

STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class TrainOptions:
    """The optimisation settings; every field is a keyword of :func:`train` and a CLI flag."""

    epochs: int = 1
    lr: float = 3e-4
    batch_tokens: int = 8192
    grad_accum: int = 1
    warmup: float = 0.05          # fraction of all steps (< 1) or a number of steps (>= 1)
    min_lr_ratio: float = 0.1     # the cosine ends at lr * min_lr_ratio
    weight_decay: float = 0.01
    clip: float = 1.0             # max gradient norm; 0 = no clipping
    seed: int = 0
    precision: str = "fp32"       # "fp32" or "bf16" (autocast; weights stay fp32)
    save_every: int = 0           # also checkpoint every N steps (0: at the end of epochs only)
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0           # also score the held-out data every N steps (0: per epoch)
    eval_train: bool = True       # score the training data after every epoch

    def __post_init__(self) -> None:
        rules = [("epochs", ">= 1", self.epochs >= 1), ("lr", "> 0", self.lr > 0),
                 ("batch_tokens", ">= 1", self.batch_tokens >= 1),
                 ("grad_accum", ">= 1", self.grad_accum >= 1),
                 ("warmup", ">= 0", self.warmup >= 0),
                 ("min_lr_ratio", "in [0, 1]", 0 <= self.min_lr_ratio <= 1),
                 ("weight_decay", ">= 0", self.weight_decay >= 0),
                 ("clip", ">= 0", self.clip >= 0), ("save_every", ">= 0", self.save_every >= 0),
                 ("keep_checkpoints", ">= 1", self.keep_checkpoints >= 1),
                 ("log_every", ">= 1", self.log_every >= 1),
                 ("eval_every", ">= 0", self.eval_every >= 0)]
        for name, rule, ok in rules:
            if not ok:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{name} ({flag}) must be {rule}, got {getattr(self, name)!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")


@dataclass
class TrainResult:
    """What a run produced: where, the per-epoch records of the log, the throughput."""

    output_dir: str
    epochs: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    tokens_per_s: float = math.nan


def train(data: str, *, model: Any, output_dir: str, eval_data: str | None = None,
          tokenizer: Any = None, text_field: str | None = None, block_size: int | None = None,
          fields: Fields = Fields(), format: str | None = None, bos: str = "auto",
          score_eos: bool = False, whitespace: str = "move", truncate: str = "error",
          resume: bool = False, device: str = "cpu", threads: int | None = None,
          trust_remote_code: bool = False, allow_pickle: bool = False,
          revision: str | None = None, progress: bool | None = None, quiet: bool = False,
          **options: Any) -> TrainResult:
    """Train ``model`` on ``data`` to maximise sum log Pr(response | prompt).

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
    from .objective import collate, response_nll
    from .progress import Progress
    from .tokenize import EncodeOptions, Encoder
    from .train_data import PLAN_VERSION, load_examples, plan_epoch, steps_of

    opts = TrainOptions(**options)
    if threads:
        torch.set_num_threads(threads)
    out = Path(output_dir)
    ckpt_dir = out / "checkpoints"
    last = _latest_checkpoint(ckpt_dir) if resume else None
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise ConfigError(f"{out} already holds checkpoints; pass resume=True (--resume) to "
                          "continue that run, or choose another output folder")
    out.mkdir(parents=True, exist_ok=True)

    # -- model, tokenizer, data ---------------------------------------------------------
    torch.manual_seed(opts.seed)
    source = str(last) if last is not None else model
    net, tok = load_model(source, tokenizer=tokenizer, device=device,
                          trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                          revision=revision)
    encode = EncodeOptions(bos=bos, score_eos=score_eos, whitespace=whitespace,
                           truncate=truncate)
    encoder = Encoder(tok, encode, max_length=context_length(net.config))
    read = dict(text_field=text_field, fields=fields, fmt=format, block_size=block_size)
    train_set = _nonempty(load_examples(data, encoder, **read), data)
    eval_set = (_nonempty(load_examples(eval_data, encoder, **read), eval_data)
                if eval_data else None)
    steps_per_epoch = len(steps_of(plan_epoch(train_set, opts.batch_tokens, seed=opts.seed,
                                              epoch=0), opts.grad_accum))
    total_steps = steps_per_epoch * opts.epochs

    # -- optimiser and schedule ---------------------------------------------------------
    decay = [p for p in net.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in net.parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": opts.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=opts.lr)
    warmup = opts.warmup * total_steps if opts.warmup < 1 else opts.warmup
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, opts.min_lr_ratio))

    step, epochs_done, log_lines, plan_version = 0, 0, 0, PLAN_VERSION
    if last is not None:
        state = torch.load(last / STATE_FILE, weights_only=False)
        plan_version = state.get("plan_version", 1)
        _check_resume(state, opts, total_steps, last)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        step, epochs_done, log_lines = state["step"], state["epochs_done"], state["log_lines"]
    log = _open_log(out / "log.jsonl", keep_lines=log_lines if last is not None else 0)
    result = TrainResult(str(out))
    result.epochs = [r for r in _read_log(out / "log.jsonl") if r.get("kind") == "epoch"]

    def evaluate_and_log(epoch: int, rate: float) -> None:
        record: dict[str, Any] = {"kind": "epoch", "epoch": epoch, "step": step}
        if opts.eval_train:
            record["train"] = evaluate(net, tok, train_set, encode, opts.batch_tokens)
        if eval_set is not None:
            record["eval"] = evaluate(net, tok, eval_set, encode, opts.batch_tokens)
        record["tokens_per_s"] = rate
        log.write(json.dumps(record) + "\n")
        log.flush()
        result.epochs.append(record)
        if not quiet:
            print(_epoch_line(record, opts.epochs), file=sys.stderr, flush=True)

    def save(epochs_finished: int) -> None:
        save_checkpoint(ckpt_dir, net, tok, step=step, epochs_done=epochs_finished,
                        optimizer=optimizer, scheduler=scheduler, log=log, options=opts,
                        total_steps=total_steps, keep=opts.keep_checkpoints,
                        plan_version=plan_version)

    if last is None:
        evaluate_and_log(0, math.nan)   # the starting point, before any update
    net.train()
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                              enabled=opts.precision == "bf16")

    # -- the loop -----------------------------------------------------------------------
    trained_tokens, train_time = 0, 0.0
    for epoch in range(epochs_done, opts.epochs):
        steps = steps_of(plan_epoch(train_set, opts.batch_tokens, seed=opts.seed, epoch=epoch,
                                    version=plan_version), opts.grad_accum)
        first = step - epoch * steps_per_epoch          # steps of this epoch already done
        epoch_tokens, epoch_time = 0, 0.0
        with Progress(f"epoch {epoch + 1}/{opts.epochs}", total=len(steps),
                      enabled=False if quiet else progress) as bar:
            bar.advance(first)
            for batches in steps[first:]:
                t0 = time.perf_counter()
                num_tokens = sum(train_set[i].num_tokens for b in batches for i in b)
                step_nll = 0.0
                for n, indices in enumerate(batches):
                    batch = collate([train_set[i] for i in indices])
                    with autocast:
                        loss, _ = response_nll(net, batch, reduction="token_mean",
                                               num_items_in_batch=num_tokens)
                    if not torch.isfinite(loss):
                        raise _diverged(loss, step + 1, epoch + 1, n + 1,
                                        [train_set[i] for i in indices], ckpt_dir)
                    loss.backward()
                    step_nll += loss.item()
                    epoch_tokens += int(batch["attention_mask"].sum())
                # The norm is computed even without clipping: an inf/nan gradient stops the run.
                grad_norm = float(torch.nn.utils.clip_grad_norm_(
                    net.parameters(), opts.clip or math.inf))
                if not math.isfinite(grad_norm):
                    raise _diverged(torch.tensor(grad_norm), step + 1, epoch + 1, len(batches),
                                    [train_set[i] for b in batches for i in b], ckpt_dir,
                                    what="gradient norm")
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                epoch_time += time.perf_counter() - t0
                bar.advance()
                if step % opts.log_every == 0:
                    log.write(json.dumps({"kind": "step", "epoch": epoch + 1, "step": step,
                                          "lr": scheduler.get_last_lr()[0],
                                          "nll_token_mean": step_nll, "grad_norm": grad_norm,
                                          "tokens_per_s": epoch_tokens / epoch_time}) + "\n")
                    log.flush()
                mid_epoch = step < (epoch + 1) * steps_per_epoch
                if eval_set is not None and opts.eval_every and step % opts.eval_every == 0 \
                        and mid_epoch:
                    record = {"kind": "eval", "epoch": epoch + 1, "step": step,
                              "eval": evaluate(net, tok, eval_set, encode, opts.batch_tokens)}
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                    net.train()
                    if not quiet:
                        print(_epoch_line(record, opts.epochs), file=sys.stderr, flush=True)
                if opts.save_every and step % opts.save_every == 0 and mid_epoch:
                    save(epoch)
        trained_tokens += epoch_tokens
        train_time += epoch_time
        evaluate_and_log(epoch + 1, epoch_tokens / epoch_time if epoch_time else math.nan)
        save(epoch + 1)
        net.train()

    # -- the final model ----------------------------------------------------------------
    net.eval()
    net.save_pretrained(out)
    tok.save_pretrained(out)
    log.close()
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


def load_model(model: Any, *, tokenizer: Any = None, device: str = "cpu",
               trust_remote_code: bool = False, allow_pickle: bool = False,
               revision: str | None = None) -> tuple[Any, Any]:
    """A trainable fp32 model and its tokenizer, from a folder/id, a config, or objects."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .backends.hf import load_hf

    tok = tokenizer
    if tok is not None and isinstance(tok, (str, os.PathLike)):
        try:
            tok = AutoTokenizer.from_pretrained(str(tok), trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the tokenizer {tokenizer!r}: {exc}") from exc
    if not isinstance(model, (str, os.PathLike)):
        if tok is None:
            raise ConfigError("a model object needs its tokenizer: pass tokenizer=...")
        return model.to(device), tok
    path = Path(os.path.expanduser(str(model)))
    if _is_config(path):
        config_file = path if path.is_file() else path / "config.json"
        if tok is None:
            if not (config_file.parent / "tokenizer_config.json").exists():
                raise ConfigError(f"{model} is a model config with no tokenizer beside it; "
                                  "pass --tokenizer PATH (a tokenizer folder)")
            tok = AutoTokenizer.from_pretrained(str(config_file.parent))
        try:
            config = AutoConfig.from_pretrained(str(config_file))
            net = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise ModelLoadError(f"cannot build a causal LM from the config {config_file}: "
                                 f"{exc}") from exc
        vocab = net.get_input_embeddings().weight.shape[0]
        if len(tok) > vocab:
            raise ConfigError(f"the tokenizer has {len(tok)} tokens but the config's "
                              f"vocab_size is {vocab}; set vocab_size >= {len(tok)} in "
                              f"{config_file}")
        return net.to(device), tok
    net, loaded_tok = load_hf(str(model), dtype="float32", device=device,
                              trust_remote_code=trust_remote_code, allow_pickle=allow_pickle,
                              revision=revision)
    return net, tok if tok is not None else loaded_tok


def _is_config(path: Path) -> bool:
    if path.is_file():
        return path.suffix == ".json"
    if not (path / "config.json").exists():
        return False
    weights = [p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".pt")]
    return not weights


def _nonempty(encoded: list[Encoded], path: str) -> list[Encoded]:
    if not any(e.response_ids for e in encoded):
        raise InputError("no response tokens to train on (every response is empty)", source=path)
    return encoded


def _diverged(loss: Any, step: int, epoch: int, micro: int, examples: list[Encoded],
              ckpt_dir: Path, what: str = "loss") -> TrainingError:
    last = _latest_checkpoint(ckpt_dir)
    kept = (f"the last good checkpoint is {last} (continue from it with --resume)" if last
            else "no checkpoint was written yet")
    return TrainingError(
        f"the {what} became {loss.item()} at step {step} (epoch {epoch}, micro-batch {micro} of "
        f"the step, {len(examples)} examples, {sum(e.num_tokens for e in examples)} response "
        f"tokens); stopped without saving; {kept}. Lower --lr, keep --clip on, or train in fp32")


# -- checkpoints and the log ------------------------------------------------------------
def save_checkpoint(ckpt_dir: Path, model: Any, tokenizer: Any, *, step: int,
                    epochs_done: int, optimizer: Any, scheduler: Any, log: Any, options: Any,
                    total_steps: int, keep: int, plan_version: int) -> Path:
    """Write ``checkpoints/step-N`` (model, tokenizer, state) atomically; prune old ones."""
    import torch

    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    log.flush()
    torch.save({"step": step, "epochs_done": epochs_done, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                             else None),
                "log_lines": _count_lines(log.name), "options": asdict(options),
                "plan_version": plan_version,
                "total_steps": total_steps}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


def _check_resume(state: dict[str, Any], opts: TrainOptions, total_steps: int,
                  path: Path) -> None:
    before = state.get("options", {})
    changed = [k for k in ("lr", "batch_tokens", "grad_accum", "seed", "epochs", "warmup",
                           "min_lr_ratio", "weight_decay", "clip", "precision")
               if before.get(k) != getattr(opts, k)]
    what = ", ".join(f"{k} {before.get(k)!r} -> {getattr(opts, k)!r}" for k in changed)
    if not changed and state.get("total_steps") != total_steps:
        what = (f"the data give {total_steps} steps, the checkpointed run had "
                f"{state.get('total_steps')}")
    if what:
        raise TrainingError(f"cannot resume from {path}: the run differs ({what}); resume with "
                            "the same data and options, or start a new output folder")


def _open_log(path: Path, *, keep_lines: int):
    if keep_lines:
        lines = path.read_text(encoding="utf-8").splitlines(True)[:keep_lines]
        path.write_text("".join(lines), encoding="utf-8")
        return open(path, "a", encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


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
    latest = _latest_checkpoint(Path(output_dir) / "checkpoints")
    if latest is None:
        return (f"interrupted before the first checkpoint; {output_dir} has nothing to resume "
                "from (checkpoints come after every epoch, or every --save-every steps): "
                "rerun without --resume")
    return (f"interrupted; the newest checkpoint is {latest} (after step "
            f"{int(latest.name.split('-', 1)[1])}); rerun with --resume to continue from it")
