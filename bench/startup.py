"""Start-up time: how long a user waits for the first output.

    python bench/startup.py            # 2 runs of each command
    python bench/startup.py --runs 3

Measures, each in a fresh subprocess (nothing shared but the OS file cache):

* ``loglik score examples/pairs.jsonl`` wall time, run after run (the first run pays the
  cold file cache and any per-model cache loglik keeps; later runs show what a user sees
  the second time);
* ``import loglik`` and ``loglik --help`` (no torch needed);
* the embedded default model: ``import torch``, then ``Scorer.from_pretrained()`` twice in
  one process (first load, and a reload with every import done: the model's own load time),
  then the same folder through transformers (what the default model cost before
  ``loglik.backends.hf.compact``: transformers' model imports and ``from_pretrained``).

Prints one table. Wall-clock numbers depend on the machine and its load; compare runs on
the same machine (this replaces the load-time bound that tests/test_default_model.py used
to assert on a shared CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_LOAD = r"""
import json, time
t0 = time.perf_counter()
import torch  # noqa: F401
t1 = time.perf_counter()
import loglik
t2 = time.perf_counter()
s = loglik.Scorer.from_pretrained()
t3 = time.perf_counter()
s = loglik.Scorer.from_pretrained()
t4 = time.perf_counter()
s.score("def f(x):\n", "    return x\n")
t5 = time.perf_counter()
from loglik.default_model import default_model_path
s = loglik.Scorer.from_pretrained(default_model_path())
t6 = time.perf_counter()
print(json.dumps({"import torch": t1 - t0, "import loglik": t2 - t1,
                  "default model, first load (loglik's Llama module)": t3 - t2,
                  "default model, reload": t4 - t3, "first score (1 pair)": t5 - t4,
                  "same model through transformers (its imports + load)": t6 - t5}))
"""


def wall(cmd: list[str]) -> float:
    """Seconds until ``cmd`` exits; its output is discarded, a failure stops the bench."""
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2, help="runs of each command (default 2)")
    parser.add_argument("--data", default="examples/pairs.jsonl",
                        help="input of the score command (default examples/pairs.jsonl)")
    args = parser.parse_args()
    loglik = [sys.executable, "-m", "loglik"]
    rows: list[tuple[str, str]] = []
    for i in range(args.runs):
        t = wall([*loglik, "score", args.data])
        rows.append((f"loglik score {args.data}, run {i + 1}", f"{t:.2f}"))
    rows.append(("python -c 'import loglik'", f"{wall([sys.executable, '-c', 'import loglik']):.2f}"))
    rows.append(("loglik --help", f"{wall([*loglik, '--help']):.2f}"))
    out = subprocess.run([sys.executable, "-c", _LOAD], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    for name, seconds in json.loads(out.stdout.strip().splitlines()[-1]).items():
        rows.append((name, f"{seconds:.2f}"))

    width = max(len(name) for name, _ in rows)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"start-up, {os.cpu_count()} CPUs, load average {load:.1f} at the end")
    print(f"{'what':<{width}}  seconds")
    print(f"{'-' * width}  -------")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:>7}")


if __name__ == "__main__":
    main()
