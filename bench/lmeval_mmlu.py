"""lm-evaluation-harness end to end: model "loglik" against lm-eval's "hf", MMLU-shaped task.

    python bench/lmeval_mmlu.py                         # 1,000 questions (tens of minutes+)
    python bench/lmeval_mmlu.py --questions 100         # reduced, on a busy machine
    python bench/lmeval_mmlu.py --runs loglik,hf-b8,hf-auto

The task is written locally (YAML + JSONL, no hub) in bench/.cache/lmeval/: N questions of
``--context-tokens`` words (~400, as MMLU with its few-shot preamble) x 4 choices of 1-3
words, on the bench's 58M Llama (bench/build.py, word-level tokenizer: one token per word,
no BOS, so both models read the same ids). Each run is one subprocess timing
``lm_eval.simple_evaluate(...)`` from the call to its return (model loading included) and
reading its peak RSS (the model's construction, loading plus loglik's load-time
self-checks, is also timed on its own: ``eval s`` is the rest); the runs must give the same
accuracy, and the per-choice log-likelihoods are compared (max |diff|, nats).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
MODEL = "llama-58m-v32k"
RUNS = {"loglik": ("loglik", ""), "hf-b8": ("hf", "8"), "hf-auto": ("hf", "auto")}


def ensure_model() -> Path:
    sys.path.insert(0, str(HERE))
    from build import VOCAB, build_model, build_tokenizer

    path = CACHE / "models" / MODEL
    if not (path / "config.json").exists():
        path.mkdir(parents=True, exist_ok=True)
        build_model(path, VOCAB)
        build_tokenizer(path)
    return path


def ensure_task(questions: int, context_tokens: int, seed: int = 0) -> Path:
    """The task folder (for --include_path) holding ``mmlu_shaped`` over local JSONL."""
    from build import SPECIAL, VOCAB

    folder = CACHE / "lmeval" / f"mmlu_shaped-{questions}x{context_tokens}"
    if (folder / "task.yaml").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"mmlu-{seed}")
    word = lambda: f"w{rng.randrange(len(SPECIAL), VOCAB)}"  # noqa: E731
    with open(folder / "test.jsonl", "w") as f:
        for _ in range(questions):
            n = rng.randint(context_tokens - 50, context_tokens + 50)
            f.write(json.dumps({
                "question": " ".join(word() for _ in range(n)),
                "choices": [" ".join(word() for _ in range(rng.randint(1, 3)))
                            for _ in range(4)],
                "answer": rng.randrange(4)}) + "\n")
    (folder / "task.yaml").write_text(f"""task: mmlu_shaped
dataset_path: json
dataset_kwargs:
  data_files:
    test: {folder / 'test.jsonl'}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
  - {{metric: acc_norm, aggregation: mean, higher_is_better: true}}
""")
    return folder


def worker(args: argparse.Namespace) -> None:
    """One run in this process: time simple_evaluate, write the figures to args.out."""
    import torch

    torch.set_num_threads(args.threads)
    import lm_eval
    from lm_eval.tasks import TaskManager

    import loglik.lmeval  # noqa: F401

    from lm_eval.api.registry import get_model

    name, batch = RUNS[args.worker]
    model_args = f"pretrained={args.model},dtype=float32"
    extra = {"device": "cpu"}
    if name != "loglik":
        extra["batch_size"] = batch if batch == "auto" else int(batch)
    tm = TaskManager(include_path=args.task)
    # As simple_evaluate(model=name, model_args=...) does, in two timed steps: the model's
    # construction (loading, loglik's self-checks) and the evaluation.
    t, c, load_avg = time.perf_counter(), _cpu(), os.getloadavg()[0]
    lm = get_model(name).create_from_arg_string(model_args, extra)
    load, load_cpu = time.perf_counter() - t, _cpu() - c
    res = lm_eval.simple_evaluate(model=lm, tasks=["mmlu_shaped"], task_manager=tm,
                                  log_samples=True)
    seconds, cpu = time.perf_counter() - t, _cpu() - c
    samples = sorted(res["samples"]["mmlu_shaped"], key=lambda s: s["doc_id"])
    out = {"run": args.worker, "seconds": seconds, "load_seconds": load, "cpu_seconds": cpu,
           "load_cpu_seconds": load_cpu,
           "load_average": (load_avg + os.getloadavg()[0]) / 2,
           "batch_size": getattr(lm, "batch_size", None) if name != "loglik" else None,
           "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           "acc": res["results"]["mmlu_shaped"]["acc,none"],
           "acc_norm": res["results"]["mmlu_shaped"]["acc_norm,none"],
           "logprobs": [[float(lp) for lp, _ in s["filtered_resps"]] for s in samples]}
    Path(args.out).write_text(json.dumps(out))


def _cpu() -> float:
    """CPU seconds (user + system, all threads) of this process so far: on a shared machine
    less noisy than wall time, which also counts the other processes' turns."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=1000)
    p.add_argument("--context-tokens", type=int, default=400)
    p.add_argument("--runs", default="loglik,hf-b8", help=f"comma-separated of {list(RUNS)}")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--task", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error")
    if args.worker:
        worker(args)
        return
    model = ensure_model()
    task = ensure_task(args.questions, args.context_tokens)
    results = {}
    print(f"load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for run in args.runs.split(","):
        out = CACHE / "lmeval" / f"result-{run}-{args.questions}.json"
        proc = subprocess.run([sys.executable, __file__, "--worker", run, "--model", str(model),
                               "--task", str(task), "--out", str(out),
                               "--threads", str(args.threads)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{run}: failed (exit {proc.returncode}): {proc.stderr.strip()[-400:]}")
            continue
        results[run] = json.loads(out.read_text())
        r = results[run]
        print(f"{run}: {r['seconds']:.1f} s (model construction {r['load_seconds']:.1f} s), "
              f"peak RSS {r['peak_rss_gb']:.2f} GB, acc {r['acc']}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    base = results.get("hf-b8")
    ours = results.get("loglik")
    print(f"\nmmlu_shaped: {args.questions} questions x 4 choices, ~{args.context_tokens}-token "
          f"contexts, {MODEL}, {args.threads} threads, fp32")
    print("  (wall seconds; cpu: CPU seconds of the process, all threads; eval: without the "
          "model's construction)")
    print(f"  {'run':<8} {'seconds':>8} {'x hf-b8':>8} {'eval s':>7} {'x hf-b8':>8} "
          f"{'cpu s':>7} {'x hf-b8':>8} {'eval cpu':>8} {'x hf-b8':>8} {'load':>5} "
          f"{'peak RSS':>9} {'acc':>6} {'max |diff| vs loglik':>21}")
    ratio = lambda key: (f"{key(base) / key(r):.2f}x" if base else "-")  # noqa: E731
    for run, r in results.items():
        speed = ratio(lambda x: x["seconds"])
        ev = r["seconds"] - r["load_seconds"]
        ev_speed = ratio(lambda x: x["seconds"] - x["load_seconds"])
        ev_cpu = r["cpu_seconds"] - r["load_cpu_seconds"]
        cpu_cols = (f"{r['cpu_seconds']:7.1f} {ratio(lambda x: x['cpu_seconds']):>8} "
                    f"{ev_cpu:8.1f} "
                    f"{ratio(lambda x: x['cpu_seconds'] - x['load_cpu_seconds']):>8} "
                    f"{r['load_average']:5.1f}")
        diff = "-"
        if ours and run != "loglik":
            worst = max(abs(a - b) for la, lb in zip(ours["logprobs"], r["logprobs"])
                        for a, b in zip(la, lb))
            diff = f"{worst:.1e}"
        print(f"  {run:<8} {r['seconds']:8.1f} {speed:>8} {ev:7.1f} {ev_speed:>8} {cpu_cols} "
              f"{r['peak_rss_gb']:8.2f}G "
              f"{r['acc']:6.3f} {diff:>21}"
              + (f"  (batch {r['batch_size']})" if r.get("batch_size") else ""))
    if base and ours:
        print(f"  loglik vs hf-b8: {base['seconds'] / ours['seconds']:.2f}x faster, peak memory "
              f"{ours['peak_rss_gb'] / base['peak_rss_gb']:.2f} of hf-b8; same acc: "
              f"{ours['acc'] == base['acc']}, same acc_norm: "
              f"{ours['acc_norm'] == base['acc_norm']}")


if __name__ == "__main__":
    main()
