"""Training checkpoints and the log: ``OUT/checkpoints/step-N`` written atomically, resumed.

A checkpoint is the model's ``save_pretrained`` folder (the adapter alone with LoRA) plus
``trainer_state.pt``: optimiser, schedule, RNG (every process's, on several), the log's
length, the options, the plan version, the number of processes and whether rows were packed.
Resuming refuses a run whose options, data or number of processes differ.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .errors import TrainingError

STATE_FILE = "trainer_state.pt"


def save_checkpoint(ckpt_dir: Path, model: Any, tokenizer: Any, *, step: int,
                    epochs_done: int, optimizer: Any, scheduler: Any, log: Any, options: Any,
                    total_steps: int, keep: int, plan_version: int, packed: bool = False,
                    world_size: int = 1, rank_rng: list[Any] | None = None,
                    weights: dict[str, Any] | None = None, optimizer_state: Any = None,
                    sharded: bool = False) -> Path:
    """Write ``checkpoints/step-N`` (model, tokenizer, state) atomically; prune old ones.

    ``weights`` / ``optimizer_state``: full state dicts gathered from FSDP shards (written
    instead of the model's and optimiser's own, which hold one process's shard)."""
    import torch

    final = ckpt_dir / f"step-{step:08d}"
    tmp = ckpt_dir / f".tmp-step-{step:08d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, state_dict=weights)
    tokenizer.save_pretrained(tmp)
    log.flush()
    optim = optimizer_state if optimizer_state is not None else optimizer.state_dict()
    torch.save({"step": step, "epochs_done": epochs_done, "optimizer": optim,
                "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
                "rank_rng": rank_rng,
                "cuda_rng": (torch.cuda.get_rng_state_all() if torch.cuda.is_available()
                             else None),
                "log_lines": count_lines(log.name), "options": asdict(options),
                "plan_version": plan_version, "packed": packed, "world_size": world_size,
                "fsdp": sharded,
                "total_steps": total_steps}, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / STATE_FILE).exists())
    return done[-1] if done else None


# Options that change the run; a checkpoint written before one existed had its default.
RESUME_KEYS = ("lr", "batch_tokens", "batch_size", "grad_accum", "seed", "epochs", "warmup",
               "min_lr_ratio", "weight_decay", "clip", "precision", "pack", "lora",
               "lora_alpha", "lora_targets")


def check_resume(state: dict[str, Any], opts: Any, path: Path, *, world_size: int) -> None:
    """Refuse to resume a run whose options or number of processes differ."""
    before = state.get("options", {})
    defaults = {f.name: f.default for f in fields(opts)}
    changed = [k for k in RESUME_KEYS if before.get(k, defaults[k]) != getattr(opts, k)]
    what = ", ".join(f"{k} {before.get(k, defaults[k])!r} -> {getattr(opts, k)!r}"
                     for k in changed)
    was = state.get("world_size", 1)
    if not what and was != world_size:
        what = (f"it ran on {was} process(es), this run has {world_size}; resume with the "
                "same launcher line (torchrun --nproc-per-node ...)")
    if what:
        raise TrainingError(f"cannot resume from {path}: the run differs ({what}); resume with "
                            "the same data and options, or start a new output folder")


def check_sharding(state: dict[str, Any], sharded: bool, path: Path) -> None:
    """Refuse to resume an FSDP run without FSDP or the other way round (the optimiser's
    state is keyed by parameter name in one, by position in the other)."""
    was = bool(state.get("fsdp", False))
    if was != sharded:
        how = "with --fsdp" if was else "with --no-fsdp"
        raise TrainingError(f"cannot resume from {path}: it was trained "
                            f"{'with' if was else 'without'} FSDP and this run is "
                            f"{'with' if sharded else 'without'}; resume {how}")


def check_steps(state: dict[str, Any], total_steps: int, path: Path) -> None:
    if state.get("total_steps") != total_steps:
        raise TrainingError(f"cannot resume from {path}: the run differs (the data give "
                            f"{total_steps} steps, the checkpointed run had "
                            f"{state.get('total_steps')}); resume with the same data and "
                            "options, or start a new output folder")


def open_log(path: Path, *, keep_lines: int):
    if keep_lines:
        lines = path.read_text(encoding="utf-8").splitlines(True)[:keep_lines]
        path.write_text("".join(lines), encoding="utf-8")
        return open(path, "a", encoding="utf-8")
    return open(path, "w", encoding="utf-8")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)
