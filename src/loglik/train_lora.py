"""LoRA through ``peft`` (``pip install 'loglik[lora]'``): adapters to train, save and score with.

``loglik train --lora R`` freezes the model and adds rank-R adapters (``W + (alpha / R) B A``)
to the linear layers named by ``--lora-targets`` (default: every linear layer but the
output head, peft's ``"all-linear"``); only the adapters get gradients and are saved:

    OUT/                      adapter_config.json + adapter_model.safetensors + tokenizer
    OUT/ with --merge         the merged model (save_pretrained), scored like any model;
                              the adapter alone in OUT/adapter/

``loglik score --model BASE --adapter OUT`` and ``Scorer.from_pretrained(BASE, adapter=OUT)``
load the base, apply the adapter and merge it into the weights for scoring (the same
function, computed without the adapter's extra matmuls).

The objective and the scorer see ``peft_model.get_base_model()``: the transformers model with
LoRA layers in place of the targeted ones, so the fused output head and the packed masks work
as for any model (:func:`trainable_model`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("LoRA needs the peft package: pip install 'loglik[lora]'") from None
    return peft


def add_lora(model: Any, *, rank: int, alpha: float | None = None,
             targets: str | None = None) -> Any:
    """``model`` wrapped by peft with fresh rank-``rank`` adapters (a ``PeftModel``).

    Args:
        rank: R, the adapters' rank (>= 1).
        alpha: the scale numerator (``alpha / R``); default ``2 R``.
        targets: comma-separated module names (``q_proj,v_proj``) or ``all-linear``
            (default: every linear layer but the output head).
    """
    peft = _peft()
    modules: Any = "all-linear" if not targets or targets == "all-linear" else \
        [t.strip() for t in targets.split(",") if t.strip()]
    config = peft.LoraConfig(r=rank, lora_alpha=alpha if alpha is not None else 2 * rank,
                             target_modules=modules, lora_dropout=0.0, bias="none")
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:   # peft: "Target modules {...} not found in the base model"
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in model.named_modules() if n})
        raise ConfigError(f"--lora-targets {targets!r}: {exc}; the model's module names "
                          f"include {', '.join(names[:20])}") from None


def resume_lora(model: Any, checkpoint: str | Path) -> Any:
    """The base ``model`` with the (trainable) adapter saved in ``checkpoint``."""
    peft = _peft()
    return peft.PeftModel.from_pretrained(model, str(checkpoint), is_trainable=True)


def trainable_model(model: Any) -> Any:
    """What the objective and the scorer run: the transformers model inside a PeftModel."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def apply_adapter(model: Any, adapter: str | Path) -> Any:
    """``model`` with the adapter in ``adapter`` merged into its weights (for scoring)."""
    if not is_adapter(adapter):
        raise ModelLoadError(f"adapter {str(adapter)!r}: no {ADAPTER_CONFIG} there; pass the "
                             "folder 'loglik train --lora' wrote (OUT_DIR without --merge, or "
                             "OUT_DIR/adapter with it)")
    peft = _peft()
    try:
        wrapped = peft.PeftModel.from_pretrained(model, str(adapter))
    except Exception as exc:
        raise ModelLoadError(f"cannot apply the adapter {str(adapter)!r} to this model: {exc}; "
                             "pass the base model it was trained on") from exc
    return wrapped.merge_and_unload().eval()


def save_lora(model: Any, tokenizer: Any, out: Path, *, merge: bool) -> None:
    """The adapter (and tokenizer) in ``out``; with ``merge``, the merged model in ``out``
    and the adapter in ``out/adapter``."""
    if not merge:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return
    model.save_pretrained(out / "adapter")
    tokenizer.save_pretrained(out / "adapter")
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
