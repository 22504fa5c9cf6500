"""loglik against lm-evaluation-harness (HFLM) and minicons: same models, same inputs, one run.

    bash bench/setup.sh            # once: lm-eval and minicons into bench/.venv
    python bench/run.py --quick    # a few minutes; drop --quick for the full workloads

Builds the models and workloads offline (bench/build.py), runs every tool on every workload
in its own subprocess (bench/worker.py), checks that each tool's log-probs agree with
loglik's, and prints one table per workload: tokens/s (prompt + response tokens of every
request, as the tools see them), the ratio to lm-eval batch 8, peak RSS, and the fraction
of the machine's limit reached (bench/limits.py). Results also go to bench/results/.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import WORKLOADS, ensure_gguf, ensure_models, ensure_workloads  # noqa: E402
from limits import workload_flops  # noqa: E402

VENV_PY = HERE / ".venv" / "bin" / "python"
# (label, tool, worker options); baselines run in bench/.venv, loglik in this interpreter.
RUNS = {
    "loglik": ("loglik", []),
    "lm-eval b8": ("lmeval", ["--batch", "8"]),
    "lm-eval auto": ("lmeval", ["--batch", "auto"]),
    "minicons b8": ("minicons", ["--batch", "8"]),
    "loop b1": ("naive", []),
    # GGUF files of the same weights (build.ensure_gguf), through llama.cpp
    "loglik gguf f32": ("gguf", ["--gguf", "f32"]),
    "loglik gguf q8_0": ("gguf", ["--gguf", "q8_0"]),
    "echo f32": ("echo", ["--gguf", "f32"]),
    "echo q8_0": ("echo", ["--gguf", "q8_0"]),
}
LOCAL_TOOLS = ("loglik", "naive", "gguf", "echo")   # run in this interpreter
AGREE_NATS = 1e-3   # per sequence, between tools (each does its own fp32 arithmetic)


def run_worker(tool: str, model: Path, workload: Path, opts: list[str], out: Path,
               threads: int, timeout: float, limit: int | None = None) -> dict:
    py = sys.executable if tool in LOCAL_TOOLS or not VENV_PY.exists() else str(VENV_PY)
    cmd = [py, str(HERE / "worker.py"), tool, str(model), str(workload), str(out),
           "--threads", str(threads), *opts, *(["--limit", str(limit)] if limit else [])]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        return {"error": failure(proc.returncode, proc.stderr or proc.stdout)}
    res = json.loads(out.read_text())
    res["wall"] = time.perf_counter() - t
    return res


def failure(code: int, output: str) -> str:
    """Why a worker failed: its last real message, or the signal that killed it.

    Progress bars redraw with carriage returns, so only the text after the last one
    counts; a run killed by the kernel (out of memory) leaves no traceback at all.
    """
    lines = [ln.rsplit("\r", 1)[-1].strip() for ln in output.splitlines()]
    lines = [ln for ln in lines if ln and "%|" not in ln]
    if code < 0:
        sig = signal.Signals(-code).name if -code in signal.valid_signals() else str(-code)
        why = f"killed by {sig}" + (" (out of memory?)" if sig == "SIGKILL" else "")
        return why + (f"; last message: {lines[-1]}" if lines else "")
    return lines[-1] if lines else f"exit {code}"


def matmul_rate(threads: int) -> float:
    out = subprocess.run([sys.executable, str(HERE / "limits.py"), str(threads)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["gflops"]


def load_avg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small workloads (a few minutes)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per tool (default 2)")
    p.add_argument("--tools", default=None,
                   help="comma-separated labels to run (default: all; --quick skips "
                   "'lm-eval auto', whose batch search needs ~10 GB)")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated")
    p.add_argument("--no-memory", action="store_true", help="skip the 128k-vocab memory table")
    p.add_argument("--bf16", action="store_true", help="also run loglik in bfloat16 (pairs)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per tool run")
    p.add_argument("--echo-limit", default=None, metavar="N[,N...]",
                   help="the echo rows score only the first N requests of each workload (one "
                   "N, or one per workload in --workloads order): the echo path is ~50x "
                   "slower; its tok/s counts the requests it scored")
    args = p.parse_args()

    cache = HERE / ".cache"
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    models = ensure_models(cache)
    workloads = ensure_workloads(cache, args.quick)
    labels = args.tools.split(",") if args.tools else [
        k for k in RUNS if not (args.quick and k == "lm-eval auto")]
    if not VENV_PY.exists():
        print("bench/.venv is missing: run `bash bench/setup.sh` for lm-eval and minicons; "
              "running loglik and the plain loop only", file=sys.stderr)
        labels = [k for k in labels if RUNS[k][0] in LOCAL_TOOLS]
    model32 = models["llama-58m-v32k"]
    if any(RUNS[k][0] in ("gguf", "echo") for k in labels):
        if importlib.util.find_spec("llama_cpp") is None:
            print("llama-cpp-python is missing (pip install 'loglik[llamacpp]'); skipping the "
                  "GGUF rows", file=sys.stderr)
            labels = [k for k in labels if RUNS[k][0] not in ("gguf", "echo")]
        else:
            ensure_gguf(model32)
    config = json.loads((model32 / "config.json").read_text())
    report = {"quick": args.quick, "threads": args.threads, "load_before": load_avg(),
              "gflops_start": matmul_rate(args.threads), "workloads": {}}
    print(f"machine: {os.cpu_count()} CPUs, load {report['load_before']}, fp32 matmul "
          f"{report['gflops_start']:.0f} GFLOP/s with {args.threads} threads")
    runs: dict[str, dict[str, dict]] = {}
    wnames = args.workloads.split(",")
    limits = [int(n) for n in args.echo_limit.split(",")] if args.echo_limit else [0]
    echo_limit = dict(zip(wnames, limits if len(limits) > 1 else limits * len(wnames)))
    for wname in wnames:
        path = workloads[wname]
        records = json.loads(path.read_text())
        fl = workload_flops(records, config)
        extra = [("loglik bf16", "loglik", ["--dtype", "bfloat16"])] if (
            args.bf16 and wname == "pairs") else []
        runs[wname] = {}
        for label, tool, opts in [(k, *RUNS[k]) for k in labels] + extra:
            out = results_dir / f"{wname}-{label.replace(' ', '_')}.json"
            print(f"  {wname}: {label} ...", end="", flush=True)
            res = run_worker(tool, model32, path, opts, out, args.threads, args.timeout,
                             limit=echo_limit.get(wname) if tool == "echo" else None)
            runs[wname][label] = res
            print(f" {res.get('seconds', float('nan')):.1f}s" if "error" not in res
                  else f" failed: {res['error']}")
        report["workloads"][wname] = {"flops": fl, "runs": runs[wname]}
    report["gflops_end"] = matmul_rate(args.threads)
    gflops = max(report["gflops_start"], report["gflops_end"])
    for wname, w in report["workloads"].items():
        print_table(wname, w["flops"], w["runs"], gflops)
    if not args.no_memory:
        report["memory"] = memory_table(models["llama-58m-v128k"], workloads["pairs"],
                                        results_dir, args)
    report["load_after"] = load_avg()
    print(f"\nload average before {report['load_before']}, after {report['load_after']}; "
          f"matmul {report['gflops_start']:.0f} -> {report['gflops_end']:.0f} GFLOP/s "
          f"(limit uses {gflops:.0f})")
    (results_dir / "report.json").write_text(json.dumps(report, indent=1))
    return 0


def print_table(wname: str, fl: dict, runs: dict, gflops: float) -> None:
    limit_s = fl["flops"] / (gflops * 1e9)
    counted = fl["counted_tokens"]
    print(f"\n{wname} ({WORKLOADS[wname]}); this run: {fl['contexts']:,} contexts, "
          f"{fl['requests']:,} requests | {counted:,} tokens counted, "
          f"{fl['unique_tokens']:,} unique, {fl['scored_tokens']:,} scored; limit "
          f"{counted / limit_s:,.0f} tok/s")
    ref = runs.get("loglik", {}).get("logprobs")
    base = tok_per_s(runs.get("lm-eval b8", {}), counted)
    print(f"  {'tool':<16} {'tok/s':>8} {'x lm-eval b8':>12} {'peak RSS':>9} {'of limit':>8} "
          f"{'max |diff| vs loglik':>20}")
    for label, res in runs.items():
        if "error" in res:
            print(f"  {label:<16} failed: {res['error'][:90]}")
            continue
        tps = tok_per_s(res, counted)
        ratio = f"{tps / base:.2f}x" if base else "-"
        diff = "-"
        if ref is not None and label != "loglik":
            d = max(abs(a - b) for a, b in zip(ref, res["logprobs"]))
            # weights rounded on purpose; the echo path keeps llama-cpp-python's F16 KV cache
            rounded = "bf16" in label or "q8_0" in label or label.startswith("echo")
            diff = f"{d:.2e}" + ("" if d <= AGREE_NATS or rounded else " DISAGREE")
        part = (f" ({res['records']} of {fl['requests']} requests)"
                if res.get("records", fl["requests"]) < fl["requests"] else "")
        print(f"  {label:<16} {tps:>8,.0f} {ratio:>12} {res['peak_rss_mb'] / 1024:>7.2f}GB "
              f"{tps / (counted / limit_s):>8.0%} {diff:>20}{part}")
        if ref is not None and "echo_token_logprobs" in res:
            d = max(abs(a - b) for a, b in zip(ref, res["echo_token_logprobs"]))
            print(f"  {'':<16} its echoed token_logprobs summed (entries c..c+n-1, as lm-eval "
                  f"reads them): max |diff| {d:.2f} nats (misaligned, see worker.run_echo)")
        if label.startswith("loglik gguf"):
            print(f"  {'':<16} speed: {gguf_ratios(label, res, runs, counted)}")
        if "padding_waste" in res:
            print(f"  {'':<16} padding {res['padding_waste']:.1%}, context sharing saved "
                  f"{res['sharing_saved']:.1%} of the tokens")


def tok_per_s(res: dict, counted: int) -> float | None:
    """Tokens per second of a run: the tokens of the requests it scored (all of them unless
    it ran with --limit) over its scoring time."""
    if "seconds" not in res:
        return None
    return res.get("tokens", counted) / res["seconds"]


def gguf_ratios(label: str, res: dict, runs: dict, counted: int) -> str:
    """A GGUF row's speed (tok/s over tok/s) against the echo path on the same file and
    loglik's HF backend."""
    dtype = label.rsplit(" ", 1)[-1]
    mine = tok_per_s(res, counted)
    parts = [f"{mine / tok_per_s(runs[other], counted):.2f}x {other}"
             for other in (f"echo {dtype}", "loglik") if "seconds" in runs.get(other, {})]
    return ", ".join(parts) or "-"


def memory_table(model: Path, workload: Path, results_dir: Path, args) -> dict:
    """Peak RSS on the 128k-vocab model: loglik at growing batch budgets vs lm-eval batch 8."""
    print(f"\nmemory, 128k-vocab model, {workload.stem}:")
    rows = [(f"loglik batch_tokens={n}", "loglik", ["--batch-tokens", str(n)])
            for n in (2048, 8192, 32768)]
    if VENV_PY.exists():
        rows.append(("lm-eval b8", "lmeval", ["--batch", "8"]))
    out = {}
    for label, tool, opts in rows:
        res = run_worker(tool, model, workload, opts,
                         results_dir / f"memory-{label.replace(' ', '_')}.json",
                         args.threads, args.timeout)
        out[label] = res
        if "error" in res:
            print(f"  {label:<28} failed: {res['error'][:90]}")
        else:
            print(f"  {label:<28} peak RSS {res['peak_rss_mb'] / 1024:.2f} GB, "
                  f"{res['seconds']:.1f} s")
    return out


if __name__ == "__main__":
    sys.exit(main())
