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
    _save(model, src, dst)
    out = {"old_layers": len(old), "new_layers": layers,
           "parameters": sum(p.numel() for p in model.parameters())}
    (dst / "grow.json").write_text(json.dumps(out))
    return out


def _save(model, src: Path, dst: Path) -> None:
    """``model`` saved to ``dst`` with ``src``'s tokenizer and generation files beside it."""
    dst.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(dst))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copy2(src / name, dst / name)


def max_logprob_change(a: Path, b: Path, texts: list[str]) -> float:
    """Largest |log-prob| difference per sequence between two models on ``texts`` (nats)."""
    from loglik import Scorer

    sa, sb = Scorer.from_pretrained(str(a)), Scorer.from_pretrained(str(b))
    la = [s.logprob for s in sa.score_many([("", t) for t in texts])]
    lb = [s.logprob for s in sb.score_many([("", t) for t in texts])]
    return max(abs(x - y) for x, y in zip(la, lb))


def widen(src: Path, dst: Path, hidden: int, seed: int = 0) -> dict:
    """Write to ``dst`` the model of ``src`` with hidden size ``hidden`` (a multiple of the
    head size; the MLP and the heads grow in the same proportion) computing the same
    log-probs. The new residual dimensions start at exactly zero and stay zero until trained:
    embeddings, ``o_proj`` and ``down_proj`` write nothing into them, the new heads' and new
    MLP units' outputs are read by zero columns of ``o_proj`` / ``down_proj``; the RMSNorm
    weights are scaled by sqrt(old/new) and eps by old/new, so the norm of a vector padded with
    zeros is the old norm. Everything that only reads the new dimensions, or writes into the
    zero columns, starts at the config's initializer (random, so the new units differ); those
    weights get gradients from the first step (Net2Net-style growth, Chen et al. 2016)."""
    import torch
    from transformers import AutoModelForCausalLM

    old = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.float32)
    c = old.config
    h0, hd = c.hidden_size, c.head_dim
    heads = hidden // hd
    if hidden <= h0 or hidden % hd or (hidden * c.intermediate_size) % h0 \
            or (heads * c.num_key_value_heads) % c.num_attention_heads:
        raise SystemExit(f"widen to {hidden}: needs a larger multiple of the head size {hd} "
                         "that keeps the MLP's and the KV heads' proportions whole")
    cfg = copy.deepcopy(c)
    cfg.hidden_size = hidden
    cfg.intermediate_size = c.intermediate_size * hidden // h0
    cfg.num_attention_heads = heads        # query head i still reads KV head i // group
    cfg.num_key_value_heads = heads * c.num_key_value_heads // c.num_attention_heads
    cfg.head_dim = hd
    cfg.rms_norm_eps = c.rms_norm_eps * h0 / hidden
    torch.manual_seed(seed)
    new = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    scale = (h0 / hidden) ** 0.5
    o, n = old.state_dict(), new.state_dict()
    with torch.no_grad():
        for name, w in n.items():
            v = o[name]
            if name.endswith("norm.weight"):
                w.zero_()
                w[:h0] = v * scale
                w[h0:] = scale                       # read zeros until trained
                continue
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                w.zero_()          # new rows write nothing new, new columns read nothing
            elif name.endswith("embed_tokens.weight") or name.endswith("lm_head.weight"):
                w[:, h0:] = 0                        # new residual dimensions start at zero
            idx = tuple(slice(0, s) for s in v.shape)
            w[idx] = v
    new.load_state_dict(n)
    _save(new, src, dst)
    out = {"old_hidden": h0, "new_hidden": hidden, "intermediate": cfg.intermediate_size,
           "heads": cfg.num_attention_heads,
           "parameters": sum(p.numel() for p in new.parameters())}
    (dst / "grow.json").write_text(json.dumps(out))
    return out
