"""Sharded training: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) under a launcher.

With ``--fsdp`` (or automatically, see :func:`use_fsdp`) every process holds only its
1/world share of the weights, gradients and AdamW state between uses: each transformer
block (the classes the model names in ``_no_split_modules``) is its own FSDP unit,
gathered for its forward and backward and freed after; the rest (embeddings, final norm,
output head, tied or not) is the root unit, the :class:`Sharded` wrapper.

The arithmetic is the data-parallel one of :mod:`loglik.train_dist`: the same micro-batches
per rank, each loss divided by the response tokens of the whole step, and gradients
*summed* over the processes (FSDP's reduce-scatter with divide factor 1, a plain SUM so
gloo can run it), so the weights after N steps equal a one-process run over the same data
within float tolerance. What FSDP adds:

* every process runs the same number of forward/backward passes (the collectives pair
  up): a process with no micro-batch left in a step runs one of the step's micro-batches
  with its loss times 0 (a zero gradient);
* the objective and the scorer call the model's body and output head separately, so both
  run *inside* the root unit's forward (``Sharded(fn)`` calls ``fn(model)``), which is when
  FSDP gathers the root's weights; evaluation runs on every process (rank 0 logs it);
* checkpoints are full state dicts: every process takes part in the gather, rank 0 writes
  the ``save_pretrained`` folder and the optimiser's full state (keyed by parameter name);
  resuming loads the full weights on every process, shards them, and re-shards the
  optimiser's state from the full one.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from .errors import ConfigError

#: Bytes of training state per parameter: fp32 weight, gradient and two AdamW moments.
STATE_BYTES = 16
#: ``--fsdp`` unset: shard when that state would take more than this share of one device.
AUTO_SHARE = 0.5


class Sharded(torch.nn.Module):
    """The root FSDP unit around a transformers model: ``Sharded(fn)`` is ``fn(model)`` run
    while the root's weights are gathered."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.lm = model

    def forward(self, fn: Callable[[Any], Any]) -> Any:
        return fn(self.lm)


def use_fsdp(choice: bool | None, model: Any, device: str, world: int) -> bool:
    """Shard? ``choice`` True/False is the user's; None (automatic): with several processes
    on CUDA when the training state (16 bytes a parameter) exceeds half the device."""
    if choice is False or world <= 1:
        return False
    if choice:
        return True
    if not device.startswith("cuda"):
        return False
    need = STATE_BYTES * sum(p.numel() for p in model.parameters())
    return need > AUTO_SHARE * torch.cuda.get_device_properties(torch.device(device)).total_memory


def shard(model: Any) -> Sharded:
    """Every transformer block an FSDP unit, the rest the root; gradients summed."""
    try:
        from torch.distributed.fsdp import FSDPModule, fully_shard
    except ImportError as exc:
        raise ConfigError(f"--fsdp needs FSDP2 (torch >= 2.6; this is torch "
                          f"{torch.__version__}): upgrade torch, or leave --fsdp out") from exc

    blocks = set(getattr(model, "_no_split_modules", None) or ())
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    root = Sharded(model)
    fully_shard(root)
    for module in root.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)      # the loss is already divided
            module.set_force_sum_reduction_for_comms(True)   # SUM, which gloo has
    # One gather of every unit now, outside the scorer's inference mode: the gathered
    # weights' buffers are made once, and made in inference mode training could not use them.
    device = next(model.parameters()).device
    with torch.no_grad():
        root(lambda m: m(input_ids=torch.zeros((1, 1), dtype=torch.long, device=device),
                         use_cache=False))
    root.reshard()
    return root


def check_fsdp(lora: int) -> None:
    if lora:
        raise ConfigError("--fsdp shards every weight; with --lora only the small adapters "
                          "train, so the base model is replicated: leave --fsdp out (or pass "
                          "--no-fsdp) with --lora")


def micro_batches(batches: list[Any], rank: int, world: int) -> list[tuple[Any, bool]]:
    """This process's micro-batches of one step, ``(indices, counts)``; padded to the same
    number on every process with ``counts=False`` runs of the step's first micro-batch.

    >>> micro_batches([[0], [1], [2]], 1, 2)
    [([1], True), ([0], False)]
    """
    mine = [(b, True) for b in batches[rank::world]]
    most = -(-len(batches) // world)
    return mine + [(batches[0], False)] * (most - len(mine))


def grad_norm(params: list[torch.nn.Parameter], clip: float) -> float:
    """Clip the (sharded) gradients to ``clip`` (0: no clipping); the total norm."""
    import math

    norm = torch.nn.utils.clip_grad_norm_(params, clip or math.inf)
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def full_state_dict(model: Any, main: bool) -> dict[str, torch.Tensor] | None:
    """The model's full state dict on CPU, on rank 0 (None elsewhere); every process calls it.

    Tied weights stay one tensor (so ``save_pretrained`` sees them tied)."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[tuple[int, tuple[int, ...]], torch.Tensor] = {}
    for name, value in model.state_dict().items():
        local = value.to_local() if hasattr(value, "to_local") else value
        key = (local.data_ptr(), tuple(value.shape))
        if key not in seen:
            full = value.full_tensor() if hasattr(value, "full_tensor") else value
            seen[key] = full.detach().cpu() if main else full
        out[name] = seen[key]
    return out if main else None


def optimizer_state(root: Sharded, optimizer: Any) -> dict[str, Any]:
    """The optimiser's full state (parameter names as keys); every process calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(root, optimizer, options=StateDictOptions(
        full_state_dict=True, cpu_offload=True))


def load_optimizer_state(root: Sharded, optimizer: Any, state: dict[str, Any]) -> None:
    """Shard a full optimiser state (from :func:`optimizer_state`) into ``optimizer``."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(root, optimizer, optim_state_dict=state,
                             options=StateDictOptions(full_state_dict=True))
