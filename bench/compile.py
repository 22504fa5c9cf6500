"""Eager against ``torch.compile`` of the model body on the pairs workload: is it worth it here?

    PYTHONPATH=src python bench/compile.py --pairs 64 --modes default,max-autotune-no-cudagraphs

For each mode, in one process and back to back with an eager run: the body is wrapped in
``torch.compile(dynamic=True, mode=...)``, the workload is scored once (compile + run: the
time a user waits the first time) and again (steady state). Reported: compile seconds (first
run minus steady run), tokens/s eager and compiled, their ratio, and the break-even: the
number of tokens a process must score before the compile has paid for itself,

    compile_s / (1 / eager_tok_s - 1 / compiled_tok_s)      (infinite if compiled is slower)

Exactness: every compiled score is compared with the eager one (1e-4 nats per sequence), and
a few sequences with the float64 reference (full forward, log_softmax in float64, gather).
Eager is timed again after each mode so that ratios come from neighbouring runs on a loaded
machine. Results also go to bench/results/compile.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from build import ensure_models, make_workload  # noqa: E402

TOL = 1e-4   # nats per sequence (shared/DESIGN.md)


def timed(scorer, pairs) -> tuple[list[float], float]:
    t = time.perf_counter()
    scores = scorer.score_many(pairs)
    return [s.logprob for s in scores], time.perf_counter() - t


def reference(model, records, n: int) -> list[float]:
    """float64 reference of the first ``n`` records: full forward, log_softmax(double)."""
    import torch

    from loglik.logprobs import reference_logprobs

    out = []
    with torch.inference_mode():
        for r in records[:n]:
            ids = torch.tensor([r["context_ids"] + r["response_ids"]])
            lp = reference_logprobs(model(ids).logits, ids)[0]               # (T-1,)
            out.append(lp[len(r["context_ids"]) - 1:].sum().item())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=64, help="pairs in the workload (default 64)")
    p.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default=None, help="model folder (default: the bench's 32k)")
    p.add_argument("--cache", default=str(HERE / ".cache"))
    args = p.parse_args()
    import torch

    from loglik import Scorer

    torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else ensure_models(Path(args.cache))["llama-58m-v32k"]
    records = make_workload("pairs", args.pairs)
    pairs = [(r["prompt"], r["response"]) for r in records]
    tokens = sum(len(r["context_ids"]) + len(r["response_ids"]) for r in records)
    scorer = Scorer.from_pretrained(str(model))
    adapter = scorer.backend.adapter
    eager_body = adapter.body
    ref = reference(scorer.backend.model, records, 4)
    base, _ = timed(scorer, pairs)                                            # warm-up
    ref_diff = max(abs(a - b) for a, b in zip(ref, base))
    report = {"pairs": args.pairs, "tokens": tokens, "threads": args.threads,
              "torch": torch.__version__, "eager_vs_float64": ref_diff, "modes": {}}
    print(f"{args.pairs} pairs, {tokens:,} tokens, {args.threads} threads, torch "
          f"{torch.__version__}; eager vs float64 reference {ref_diff:.2e} nats")
    for mode in args.modes.split(","):
        adapter.body = eager_body
        _, eager_before = timed(scorer, pairs)
        torch._dynamo.reset()
        adapter.body = torch.compile(eager_body, dynamic=True, mode=mode)
        try:
            got, first = timed(scorer, pairs)
            got2, steady = timed(scorer, pairs)
        except Exception as exc:   # a compile failure is a result too
            print(f"  {mode}: compile failed: {type(exc).__name__}: {str(exc)[:200]}")
            report["modes"][mode] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        adapter.body = eager_body
        _, eager_after = timed(scorer, pairs)
        eager = (eager_before + eager_after) / 2
        diff = max(abs(a - b) for a, b in zip(base, got + got2))
        compile_s = max(0.0, first - steady)
        gain = 1 / (tokens / eager) - 1 / (tokens / steady)        # seconds saved per token
        breakeven = compile_s / gain if gain > 0 else float("inf")
        row = {"compile_s": compile_s, "first_s": first, "steady_s": steady,
               "eager_s": eager, "eager_tok_s": tokens / eager, "compiled_tok_s": tokens / steady,
               "speedup": eager / steady, "breakeven_tokens": breakeven, "max_diff": diff,
               "exact": diff <= TOL}
        report["modes"][mode] = row
        print(f"  {mode}: compile {compile_s:.1f}s, eager {row['eager_tok_s']:,.0f} tok/s "
              f"(before {tokens / eager_before:,.0f}, after {tokens / eager_after:,.0f}), "
              f"compiled {row['compiled_tok_s']:,.0f} tok/s, x{row['speedup']:.3f}, "
              f"break-even {breakeven:,.0f} tokens, max |diff| vs eager {diff:.1e}"
              + ("" if row["exact"] else " NOT EXACT"))
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "compile.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
