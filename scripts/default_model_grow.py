"""Grow a trained Llama model deeper without changing what it computes (the retrain stages).

``grow(src, dst, layers)`` inserts new decoder layers between the trained ones; each new
layer is a copy of the trained layer before it with ``o_proj`` and ``down_proj`` set to zero,
so its attention and MLP add exactly zero to the residual stream and the grown model's
log-probs equal the old model's (checked by :func:`max_logprob_change`). Training then moves
the new layers off the identity: the copied q/k/v/gate/up weights give the zeroed outputs
non-zero gradients from the first step.

    layers (old)  0 1 2 3        -> (new, 4 -> 8)  0 0' 1 1' 2 2' 3 3'
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path


def grow(src: Path, dst: Path, layers: int) -> dict:
    """Write to ``dst`` the model of ``src`` with ``layers`` decoder layers (a multiple of the
    old count); tokenizer files are copied beside it. Returns {"old_layers", "new_layers",
    "parameters"}."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    old = list(model.model.layers)
    if layers % len(old):
        raise SystemExit(f"--grow-layers {layers}: not a multiple of the {len(old)} trained layers")
    per = layers // len(old)
    new = []
    for layer in old:
        new.append(layer)
        for _ in range(per - 1):
            twin = copy.deepcopy(layer)
            with torch.no_grad():
                twin.self_attn.o_proj.weight.zero_()       # attention adds 0 to the residual
                twin.mlp.down_proj.weight.zero_()          # the MLP adds 0 too
            new.append(twin)
    for i, layer in enumerate(new):
        layer.self_attn.layer_idx = i
    model.model.layers = torch.nn.ModuleList(new)
    model.config.num_hidden_layers = layers
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[0]] * layers
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)
    out = {"old_layers": len(old), "new_layers": layers,
           "parameters": sum(p.numel() for p in model.parameters())}
    (dst / "grow.json").write_text(json.dumps(out))
    return out


def max_logprob_change(a: Path, b: Path, texts: list[str]) -> float:
    """Largest |log-prob| difference per sequence between two models on ``texts`` (nats)."""
    from loglik import Scorer

    sa, sb = Scorer.from_pretrained(str(a)), Scorer.from_pretrained(str(b))
    la = [s.logprob for s in sa.score_many([("", t) for t in texts])]
    lb = [s.logprob for s in sb.score_many([("", t) for t in texts])]
    return max(abs(x - y) for x, y in zip(la, lb))
