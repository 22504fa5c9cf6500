"""The machine's limit for a workload: FLOPs of one forward pass over the unique tokens.

Counted the way the performance model of shared/DESIGN.md states it: every unique token
(a shared context once) goes through the body once; attention scores and values over the
keys each token sees (causal); the output head only at positions that predict a response
token. Divided by the fp32 matrix-multiply rate measured on this machine in the same run,
that is the fastest any tool could score the workload.
"""

from __future__ import annotations

import json
import time


def model_flops(config: dict) -> dict[str, float]:
    """Per-token FLOPs (multiply-add = 2) of a Llama-style config's parts."""
    d = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kv = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or d // heads
    mlp = config["intermediate_size"]
    proj = d * heads * head_dim * 2 + d * kv * head_dim * 2      # q, o and k, v
    return {"body": 2.0 * layers * (proj + 3 * d * mlp),          # per token
            "attn_per_key": 2.0 * 2 * layers * heads * head_dim,  # QK^T and AV, per key
            "head": 2.0 * d * config["vocab_size"]}               # per scored token


def workload_flops(records: list[dict], config: dict) -> dict[str, float]:
    """FLOPs of the unique work: contexts shared by identical ids are counted once."""
    f = model_flops(config)
    groups: dict[tuple[int, ...], list[list[int]]] = {}
    for r in records:
        groups.setdefault(tuple(r["context_ids"]), []).append(r["response_ids"])
    tokens = keys = scored = 0
    for ctx, responses in groups.items():
        c = len(ctx)
        tokens += c
        keys += c * (c + 1) // 2                     # context token i sees i + 1 keys
        for resp in responses:
            n = len(resp) - 1                        # response tokens read (all but the last)
            tokens += n
            keys += sum(c + k + 1 for k in range(n))
            scored += len(resp)
    total = tokens * f["body"] + keys * f["attn_per_key"] + scored * f["head"]
    counted = sum(len(r["context_ids"]) + len(r["response_ids"]) for r in records)
    return {"flops": total, "unique_tokens": tokens, "scored_tokens": scored,
            "counted_tokens": counted, "requests": len(records), "contexts": len(groups)}


def matmul_rate(threads: int, seconds: float = 2.0, clock=time.perf_counter) -> float:
    """fp32 GFLOP/s of torch.mm at shapes like the model's (2048x512 @ 512x1376), timed by
    ``clock`` (wall time; bench/ceiling.py passes ``time.process_time``)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 512), torch.randn(512, 1376)
    for _ in range(3):
        a @ b
    n, t = 0, clock()
    while clock() - t < seconds:
        a @ b
        n += 1
    return 2.0 * 2048 * 512 * 1376 * n / (clock() - t) / 1e9


if __name__ == "__main__":
    import sys

    print(json.dumps({"gflops": matmul_rate(int(sys.argv[1]) if len(sys.argv) > 1 else 2)}))
