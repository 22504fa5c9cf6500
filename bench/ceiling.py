"""How close to the machine's limit can any PyTorch program get on a workload? (issue 19)

    python bench/ceiling.py                      # the four workloads, first 128 requests each
    python bench/ceiling.py --workloads pairs --requests 512 --threads 2

`bench/run.py`'s limit is the workload's FLOPs at the rate of one matrix multiply of the
model's friendliest shape (2048x512 @ 512x1376). A real forward pass multiplies other shapes
too (the 512-wide projections, the output head over 32k columns, the short rows of a batch's
last chunk), each at its own rate. This script scores the workload with loglik under
torch's profiler (recording shapes), then replays every matrix multiply it made -- the same
shapes, the same count, back to back with nothing else in between -- and prints, against
the limit:

* ``loglik``: loglik's own time (a separate run without the profiler);
* ``matmuls in situ``: loglik's time if everything but its matrix multiplies were free
  (the profiled matmul share of its time); ``+ attention``: the same with the attention
  kernels kept;
* ``replay``: the recorded multiplies run again back to back, each shape's operands reused
  (hot in cache): the kernels' own rate at these shapes when nothing else touches the cache;
* the profiled split: matmul, attention, everything else (norms, rotary, SiLU, adds).

If ``matmuls in situ`` is under a target, no change outside the matrix-multiply kernel and
the memory traffic between layers reaches it on this machine. CPU seconds
(``time.process_time``, the default) or wall seconds (``--clock wall``) are used
throughout: on a shared machine CPU seconds move much less. One process, ``--threads``
torch threads.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import WORKLOADS, ensure_models, ensure_workloads  # noqa: E402
from limits import matmul_rate, workload_flops  # noqa: E402

CLOCK = time.process_time          # --clock wall: time.perf_counter
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")
ATTENTION_OPS = ("aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_attention_math", "aten::_softmax")


def mm_flops(op: str, shapes: list) -> float:
    """FLOPs of one call from its input shapes (multiply-add = 2)."""
    if op == "aten::addmm":
        shapes = shapes[1:]
    (m, k), (_, n) = shapes[0][-2:], shapes[1][-2:]
    batch = shapes[0][0] if op == "aten::bmm" else 1
    return 2.0 * batch * m * k * n


def replay(calls: list[tuple[str, list, int]]) -> float:
    """CPU seconds to run every recorded matrix multiply again, shape for shape."""
    import torch

    total = 0.0
    for op, shapes, count in calls:
        if op == "aten::addmm":
            shapes = shapes[1:]
        a, b = torch.randn(*shapes[0]), torch.randn(*shapes[1])
        mul = torch.bmm if op == "aten::bmm" else torch.mm
        mul(a, b)                                          # warm: first-touch of the buffers
        t = CLOCK()
        for _ in range(count):
            mul(a, b)
        total += CLOCK() - t
    return total


def measure(scorer, pairs: list[tuple[str, str]]) -> dict:
    from torch.profiler import ProfilerActivity, profile

    scorer.score_many(pairs[:8])                           # warm
    t = CLOCK()
    scorer.score_many(pairs)
    plain = CLOCK() - t
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        scorer.score_many(pairs)
    calls, split = [], {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    executed = 0.0
    for e in prof.key_averages(group_by_input_shape=True):
        self_s = e.self_cpu_time_total / 1e6
        if e.key in MATMUL_OPS:
            shapes = [s for s in e.input_shapes if s]
            calls.append((e.key, shapes, e.count))
            executed += mm_flops(e.key, shapes) * e.count
            split["matmul"] += self_s
        elif e.key in ATTENTION_OPS:
            split["attention"] += self_s
        else:
            split["other"] += self_s
    profiled = sum(split.values())
    return {"seconds": plain, "replay": replay(calls), "split": split,
            "profiled": profiled, "matmul_flops": executed, "matmul_calls": sum(c for *_, c in calls)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--requests", type=int, default=128,
                    help="first N requests of each full workload (whole contexts' groups)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="CPU seconds of the process (steadier on a shared machine) or wall "
                    "seconds (as bench/run.py; for an idle machine)")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.perf_counter if args.clock == "wall" else time.process_time
    import torch

    torch.set_num_threads(args.threads)
    from loglik import Scorer

    cache = HERE / ".cache"
    model = ensure_models(cache)["llama-58m-v32k"]
    config = json.loads((model / "config.json").read_text())
    paths = ensure_workloads(cache, quick=False)
    scorer = Scorer.from_pretrained(str(model), dtype="float32")
    rate = matmul_rate(args.threads, clock=CLOCK)
    print(f"fp32 matmul {rate:.1f} GFLOP/s ({args.clock} time, {args.threads} thread(s), "
          "limit shape)")
    print("| workload (requests) | loglik | matmuls in situ | + attention | replay | split: "
          "matmul / attention / other | matmul FLOPs run / limit FLOPs |")
    print("|---|---|---|---|---|---|---|")
    for name in args.workloads.split(","):
        records = json.loads(paths[name].read_text())[:args.requests]
        fl = workload_flops(records, config)
        limit_s = fl["flops"] / (rate * 1e9)
        got = measure(scorer, [(r["prompt"], r["response"]) for r in records])
        sp, p = got["split"], got["profiled"]
        in_situ = got["seconds"] * sp["matmul"] / p
        with_attention = got["seconds"] * (sp["matmul"] + sp["attention"]) / p

        def pct(seconds: float) -> str:
            return f"{100 * limit_s / seconds:.0f}%"

        print(f"| {name} ({len(records)}) | {pct(got['seconds'])} | {pct(in_situ)} | "
              f"{pct(with_attention)} | {pct(got['replay'])} | {100 * sp['matmul'] / p:.0f}% / "
              f"{100 * sp['attention'] / p:.0f}% / {100 * sp['other'] / p:.0f}% | "
              f"{got['matmul_flops'] / fl['flops']:.2f} |", flush=True)
    print(f"(rate after: {matmul_rate(args.threads, clock=CLOCK):.1f} GFLOP/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
