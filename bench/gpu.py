"""The GPU benchmark: loglik against lm-eval, a plain loop and vLLM on a ~0.5B Llama-style model.

    bash bench/gpu.sh               # on a CUDA machine: installs what it can, then this
    python bench/gpu.py --dry-run   # anywhere: tiny models on the CPU, every code path

Builds two Llama-style models from a config with random weights (hidden 1024, 24 layers,
16 heads / 8 KV heads, MLP 4096: 0.40B body; vocab 32,000 -> 0.47B and 128,000 -> 0.66B
parameters) and the four workloads of bench/build.py (pairs, choices, best-of-16, long),
runs each tool once over all workloads in its own process (bench/gpu_worker.py), and prints
per workload: tokens/s (prompt + response tokens of every request), the ratio to lm-eval,
MFU (FLOPs of one forward over the unique tokens, head only at scored positions, as in
bench/limits.py, over the time and the bf16 dense peak of the detected GPU) and the peak GPU
memory; then the memory of loglik and lm-eval on the 128k-vocab model. Log-probs of every
tool are compared with loglik's (bf16 rounding differs between engines: printed, not judged;
in the fp32 dry run they must agree to 1e-3 nats). Results go to bench/results/gpu.json.

``--dry-run`` builds the models small (hidden 64, 2 layers), uses a few requests per
workload, runs on the CPU in float32 and skips what needs CUDA (vLLM), saying why.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from build import VOCAB, build_tokenizer, make_workload  # noqa: E402
from limits import workload_flops  # noqa: E402

# bf16 dense tensor-core peaks (TFLOP/s, no sparsity), matched on the device name in order.
PEAK_BF16_TFLOPS = (("H200", 989.0), ("GH200", 989.0), ("H100 PCIe", 756.0),
                    ("H100 NVL", 835.0), ("H100", 989.0), ("H800", 989.0), ("B200", 2250.0),
                    ("B100", 1750.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("L40", 181.0), ("A6000", 155.0), ("A10G", 70.0), ("A10", 125.0),
                    ("L4", 121.0), ("4090", 165.0), ("3090", 71.0), ("T4", 65.0))

GPU_MODEL = dict(hidden=1024, layers=24, heads=16, kv_heads=8, mlp=4096)
DRY_MODEL = dict(hidden=64, layers=2, heads=4, kv_heads=2, mlp=128)
GPU_SIZES = {"pairs": 2048, "choices": 512, "best_of_16": 128, "long": 128}
DRY_SIZES = {"pairs": 16, "choices": 2, "best_of_16": 1, "long": 1}
AGREE_NATS = 1e-3   # fp32 dry run: per sequence, between tools


def peak_tflops(name: str) -> float | None:
    """bf16 dense peak of a GPU from its name (``torch.cuda.get_device_name``); None if unknown.

    >>> peak_tflops("NVIDIA H100 80GB HBM3")
    989.0
    """
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def build_model(path: Path, vocab: int, shape: dict, dtype: str) -> None:
    """A Llama-style model with random weights, written with the bench's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=shape["hidden"],
                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                         num_key_value_heads=shape["kv_heads"], intermediate_size=shape["mlp"],
                         max_position_embeddings=4096, tie_word_embeddings=False,
                         bos_token_id=None, eos_token_id=1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    build_tokenizer(path)


def ensure_inputs(cache: Path, dry: bool, dtype: str) -> tuple[dict[str, Path], dict[str, Path]]:
    """Model folders {"v32k", "v128k"} and workload files {name: path}, built once."""
    shape, sizes = (DRY_MODEL, DRY_SIZES) if dry else (GPU_MODEL, GPU_SIZES)
    tag = "dry" if dry else "gpu"
    models = {}
    for name, vocab in (("v32k", VOCAB), ("v128k", 128_000)):
        path = cache / "models" / f"llama-{tag}-{name}"
        if not (path / "config.json").exists():
            t = time.perf_counter()
            build_model(path, vocab, shape, dtype)
            print(f"built {path.name} in {time.perf_counter() - t:.0f}s")
        models[name] = path
    workloads = {}
    for name, size in sizes.items():
        path = cache / "workloads" / f"{name}-{size}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(make_workload(name, size)))
        workloads[name] = path
    return models, workloads


def run_tool(tool: str, model: Path, workloads: list[Path], out: Path, opts: list[str],
             timeout: float, python: str = sys.executable) -> dict:
    cmd = [python, str(HERE / "gpu_worker.py"), tool, str(model), str(out),
           "--workloads", ",".join(map(str, workloads)), *opts]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f}s"}
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        return {"error": lines[-1][:300] if lines else f"exit {proc.returncode}"}
    res = json.loads(out.read_text())
    res["_wall"] = wall
    return res


def plan_tools(dry: bool, device: str) -> tuple[list[tuple[str, str, list[str]]], list[str]]:
    """(label, tool, worker options) to run, and why the others are skipped."""
    runs = [("loglik", "loglik", []),
            ("loglik varlen", "loglik-varlen", []),
            ("lm-eval auto", "lmeval", ["--batch", "auto"] + (
                ["--max-batch", "2", "--max-length", "2048"] if dry else [])),
            ("loop b1", "loop", ["--limit", "2" if dry else "200"]),
            ("vllm", "vllm", [])]
    skipped = []
    if not device.startswith("cuda"):
        skipped.append("vllm: needs a CUDA GPU")
    if importlib.util.find_spec("lm_eval") is None:
        skipped.append("lm-eval auto: lm_eval not installed (pip install lm-eval==0.4.13)")
    if device.startswith("cuda"):
        skipped.append("loglik varlen: on CUDA the default loglik row already uses it "
                       "where the model allows")
    if device.startswith("cuda"):
        runs.insert(1, ("loglik bt32k", "loglik", ["--batch-tokens", "32768"]))
    names = {s.split(":")[0] for s in skipped}
    return [r for r in runs if r[0] not in names], skipped


def vllm_python(python: str | None, wait: float, since: float) -> tuple[str | None, str]:
    """The interpreter that has vLLM (this one, or gpu.sh's bench/.venv-vllm once its
    background install wrote ``ready`` next to it, waiting at most ``wait`` seconds from
    ``since``), or None and why not."""
    if python is None:
        ok = importlib.util.find_spec("vllm") is not None
        return (sys.executable, "") if ok else (None, "vllm: not installed (bench/gpu.sh "
                                                 "installs it where pip reaches an index)")
    ready = Path(python).resolve().parent.parent / "ready"
    if Path(python).resolve() != Path(sys.executable).resolve():
        while not ready.exists() and time.time() - since < wait:
            time.sleep(5)
    probe = subprocess.run([python, "-c", "import vllm"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"vllm: not importable with {python} (install failed or unfinished; " \
                     "see bench/.venv-vllm.log)"
    return python, ""


def print_tables(report: dict, peak: float | None) -> None:
    for wname, w in report["workloads"].items():
        fl = w["flops"]
        print(f"\n{wname}: {fl['requests']:,} requests, {fl['counted_tokens']:,} tokens counted, "
              f"{fl['unique_tokens']:,} unique, {fl['scored_tokens']:,} scored")
        print(f"  {'tool':<14} {'tok/s':>10} {'x lm-eval':>9} {'MFU':>6} {'peak mem':>9} "
              f"{'max |diff| vs loglik':>21}")
        base = w["runs"].get("lm-eval auto", {}).get("tok_s")
        for label, r in w["runs"].items():
            if "error" in r:
                print(f"  {label:<14} failed: {r['error'][:100]}")
                continue
            ratio = f"{r['tok_s'] / base:.2f}x" if base else "-"
            mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "n/a"
            diff = "-" if r.get("diff") is None else f"{r['diff']:.2e}" + (
                " DISAGREE" if r.get("disagree") else "")
            sub = f" ({r['requests']} req)" if r["requests"] < fl["requests"] else ""
            print(f"  {label:<14} {r['tok_s']:>10,.0f} {ratio:>9} {mfu:>6} "
                  f"{r['peak_mem_mb'] / 1024:>7.2f}GB {diff:>21}{sub}")
    if report.get("memory"):
        print("\nmemory, 128k-vocab model, pairs:")
        for label, r in report["memory"].items():
            print(f"  {label:<14} " + (f"failed: {r['error'][:100]}" if "error" in r else
                                       f"peak {r['peak_mem_mb'] / 1024:.2f} GB, "
                                       f"{r['tok_s']:,.0f} tok/s"))
    if peak is None:
        print("\nMFU: n/a " + ("on the CPU (dry run)" if report["device"] == "cpu" else
                               "(no bf16 peak known for this GPU: add it to PEAK_BF16_TFLOPS)"))


def summarise(r: dict, fl: dict, records: list[dict], config: dict, ref: list | None,
              peak: float | None, dry: bool) -> dict:
    """tok/s, MFU, memory and agreement of one tool on one workload (``r`` from the worker;
    a tool that ran a prefix of the records, the plain loop, is measured on that prefix)."""
    n = r["requests"]
    part = records[:n]
    flops = fl["flops"] if n == len(records) else workload_flops(part, config)["flops"]
    counted = sum(len(x["context_ids"]) + len(x["response_ids"]) for x in part)
    out = {"seconds": r["seconds"], "requests": n, "tok_s": counted / r["seconds"],
           "peak_mem_mb": r["peak_mem_mb"],
           "mfu": flops / r["seconds"] / (peak * 1e12) if peak else None}
    if ref is not None:
        out["diff"] = max(abs(a - b) for a, b in zip(ref, r["logprobs"]))
        out["disagree"] = dry and out["diff"] > AGREE_NATS
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true",
                   help="tiny models on the CPU, a few requests: every code path, no GPU")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--cache", default=str(HERE / ".cache"))
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds per tool run (default 300; 1800 with --dry-run, whose CPU "
                   "start-ups dominate on a busy machine)")
    p.add_argument("--no-memory", action="store_true", help="skip the 128k-vocab table")
    p.add_argument("--vllm-python", default=None,
                   help="interpreter with vLLM (gpu.sh: bench/.venv-vllm/bin/python)")
    p.add_argument("--vllm-wait", type=float, default=0,
                   help="seconds to wait for gpu.sh's background vLLM install")
    args = p.parse_args()
    args.timeout = args.timeout or (1800 if args.dry_run else 300)
    since = time.time()
    import torch

    cuda = torch.cuda.is_available()
    device = args.device or ("cuda" if cuda and not args.dry_run else "cpu")
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    peak = peak_tflops(name) if device.startswith("cuda") else None
    print(f"device {device} ({name}), {dtype}, bf16 peak "
          + (f"{peak:.0f} TFLOP/s" if peak else "n/a") + f", torch {torch.__version__}")
    if not args.dry_run and not device.startswith("cuda"):
        print("no CUDA GPU: use --dry-run to check the script on the CPU", file=sys.stderr)
        return 2
    models, workloads = ensure_inputs(Path(args.cache), args.dry_run, dtype)
    config = json.loads((models["v32k"] / "config.json").read_text())
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs, skipped = plan_tools(args.dry_run, device)
    for why in skipped:
        print(f"skipped {why}")
    common = ["--device", device, "--dtype", dtype] + (["--threads", "2"] if args.dry_run else [])
    paths = list(workloads.values())
    results: dict[str, dict] = {}
    for label, tool, opts in runs:
        python = sys.executable
        if tool == "vllm":
            python, why = vllm_python(args.vllm_python, args.vllm_wait, since)
            if python is None:
                skipped.append(why)
                print(f"skipped {why}")
                continue
        t = time.perf_counter()
        results[label] = run_tool(tool, models["v32k"], paths,
                                  out_dir / f"gpu-{tool}.json", common + opts, args.timeout,
                                  python)
        status = results[label].get("error", "ok")
        print(f"  {label}: {status} ({time.perf_counter() - t:.0f}s with start-up)", flush=True)
    if "loglik" in results and "error" not in results["loglik"] and dtype != "float32":
        results["loglik fp32"] = run_tool("loglik", models["v32k"], [workloads["pairs"]],
                                          out_dir / "gpu-loglik-fp32.json",
                                          ["--device", device, "--dtype", "float32"],
                                          args.timeout)
    report = {"device": name, "dtype": dtype, "peak_tflops": peak, "dry_run": args.dry_run,
              "model": GPU_MODEL if not args.dry_run else DRY_MODEL, "skipped": skipped,
              "workloads": {}}
    bad = 0
    for wname, path in workloads.items():
        records = json.loads(path.read_text())
        fl = workload_flops(records, config)
        ref = results.get("loglik", {}).get(wname, {}).get("logprobs")
        rows = {}
        for label, res in results.items():
            if "error" in res:
                rows[label] = {"error": res["error"]}
            elif wname in res:
                rows[label] = summarise(res[wname], fl, records, config,
                                        None if label == "loglik" else ref, peak, args.dry_run)
                bad += bool(rows[label].get("disagree"))
        report["workloads"][wname] = {"flops": fl, "runs": rows}
    if not args.no_memory:
        report["memory"] = memory_rows(models["v128k"], workloads["pairs"], out_dir, common,
                                       args.timeout, [r for r in runs if r[1] in
                                                      ("loglik", "lmeval")])
    print_tables(report, peak)
    failed = [k for k, v in results.items() if "error" in v]
    (out_dir / "gpu.json").write_text(json.dumps(report, indent=1))
    if args.dry_run and (failed or bad):
        print(f"\ndry run FAILED: {len(failed)} tool(s) failed, {bad} disagreement(s)")
        return 1
    return 0


def memory_rows(model: Path, pairs: Path, out_dir: Path, common: list[str], timeout: float,
                runs: list[tuple[str, str, list[str]]]) -> dict:
    """loglik and lm-eval on the 128k-vocab model (pairs): peak memory and speed."""
    records = json.loads(pairs.read_text())
    counted = sum(len(x["context_ids"]) + len(x["response_ids"]) for x in records)
    rows = {}
    for label, tool, opts in runs:
        res = run_tool(tool, model, [pairs], out_dir / f"gpu-mem-{tool}.json", common + opts,
                       timeout)
        rows[label] = res if "error" in res else {
            "peak_mem_mb": res["pairs"]["peak_mem_mb"],
            "tok_s": counted / res["pairs"]["seconds"]}
    return rows


if __name__ == "__main__":
    sys.exit(main())
