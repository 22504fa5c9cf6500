"""Training on several processes: the launcher's process group, gradients summed per step.

``loglik train`` needs no flag of its own for this: under ``torchrun`` or ``accelerate
launch`` (both set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``)
:func:`init_processes` joins the group (NCCL on CUDA, gloo on CPU) and each process takes
its share of every optimiser step:

* every process plans the same epochs from the seed; an optimiser step is
  ``grad_accum x world`` micro-batches and process ``rank`` takes micro-batches
  ``rank, rank + world, ...`` of it (data sharded by rank);
* each micro-batch loss is divided by the response tokens of the *whole step over all
  processes* (``num_items_in_batch``), so after :func:`sum_gradients` (one all-reduce of the
  flattened gradients, SUM) every process holds exactly the gradient one process would have
  computed over the same micro-batches, and takes the same AdamW step;
* only rank 0 scores, logs and writes checkpoints; the others wait at a barrier.

This is data parallelism as PyTorch DDP does it with ``no_sync`` accumulation, written out:
the objective calls the model's body and output head separately (the fused head), which DDP's
forward wrapper would not see, and a step's last micro-batches may leave a process with
none, which DDP cannot wait out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Processes:
    """This process's place in the run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False   # this call initialised the process group (and ends it)

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_processes(device: str) -> tuple[Processes, str]:
    """Join the launcher's process group; the device of this process (``cuda`` becomes
    ``cuda:LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Processes(), device
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        device = f"cuda:{local}"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Processes(rank, world, local, owns), device


def sum_gradients(params: list[torch.nn.Parameter], procs: Processes) -> None:
    """Sum every trainable parameter's gradient over the processes (one all-reduce)."""
    if procs.world == 1:
        return
    import torch.distributed as dist

    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])                     # (P,)
    dist.all_reduce(flat)
    at = 0
    for p in params:
        n = p.numel()
        p.grad = flat[at:at + n].view_as(p).clone()
        at += n


def sum_floats(values: list[float], procs: Processes, device: Any) -> list[float]:
    """The element-wise sum of ``values`` over the processes (fp64)."""
    if procs.world == 1:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def broadcast_weights(model: Any, procs: Processes) -> None:
    """Rank 0's weights to every process (they start identical from the same seed anyway)."""
    if procs.world == 1:
        return
    import torch.distributed as dist

    with torch.no_grad():
        for p in model.parameters():
            dist.broadcast(p.data, 0)


def rng_states(procs: Processes) -> list[torch.Tensor] | None:
    """Every process's CPU RNG state, gathered on rank 0 (dropout resumes per rank)."""
    if procs.world == 1:
        return None
    import torch.distributed as dist

    out: list[Any] = [None] * procs.world
    dist.all_gather_object(out, torch.get_rng_state())
    return out


def barrier(procs: Processes) -> None:
    if procs.world > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown(procs: Processes) -> None:
    if procs.owns_group:
        import torch.distributed as dist

        dist.destroy_process_group()
