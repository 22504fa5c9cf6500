"""``loglik compare-runs RUN_A RUN_B``: two lm-eval runs, compared document by document.

Reads the ``samples_<task>_*.jsonl`` files lm-eval writes with ``--log_samples`` and prints,
per task and metric, the mean of each run, the paired difference A − B with a bootstrap
interval over the same documents, win/tie rates and the documents that differ most
(:func:`loglik.evalruns.compare_runs`). ``--json`` prints one JSON object instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare-runs", help="paired comparison of two lm-eval runs (--log_samples folders)",
        description="Compare two lm-evaluation-harness runs written with --output_path and "
        "--log_samples, document by document: per task and metric the paired difference "
        "A − B with a bootstrap confidence interval, win/tie rates and the documents that "
        "differ most.")
    p.add_argument("run_a", metavar="RUN_A", help="--output_path folder of the first run")
    p.add_argument("run_b", metavar="RUN_B", help="--output_path folder of the second run")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: all in both)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="level of the bootstrap intervals (default 0.95)")
    p.add_argument("--num-bootstrap", type=int, default=10_000,
                   help="bootstrap resamples of the documents (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--top", type=int, default=3,
                   help="documents with the largest differences to list per metric (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..evalruns import compare_runs

    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    result = compare_runs(args.run_a, args.run_b, tasks=tasks, confidence=args.confidence,
                          num_bootstrap=args.num_bootstrap, seed=args.seed, top=args.top)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False))
    else:
        print_runs(result)
    return 0


def _g(x: float) -> str:
    return f"{x:.4g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def print_runs(c: Any, file: Any = None) -> None:
    """The terminal tables of a :class:`~loglik.evalruns.RunComparison`."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout)
    if not console.is_terminal:
        console.width = max(console.width, 120)   # files and pipes: no wrapping at 80
    conf = c.metrics[0].confidence if c.metrics else 0.95
    t = Table(title=f"A = {c.run_a}\nB = {c.run_b}\npaired differences A − B over the same "
              "documents")
    for col in ("task", "filter", "metric", "docs", "A", "B", "Δ mean", f"{conf:.0%} CI",
                "A higher / B higher / tie"):
        t.add_column(col, justify="left" if col in ("task", "filter", "metric") else "right")
    for m in c.metrics:
        t.add_row(m.task, m.filter, m.metric, str(m.num_docs), _g(m.mean_a), _g(m.mean_b),
                  f"{m.diff_mean:+.4g}", f"[{m.ci_low:+.3g}, {m.ci_high:+.3g}]",
                  f"{m.win_rate_a:.1%} / {m.win_rate_b:.1%} / {m.tie_rate:.1%}")
    console.print(t)
    for m in c.metrics:
        if not m.largest:
            continue
        t = Table(title=f"{m.task} {m.metric}: documents that differ most")
        for col in ("doc", "text", "A", "B", "Δ"):
            t.add_column(col, justify="left" if col == "text" else "right",
                         overflow="ellipsis", no_wrap=True, max_width=50 if col == "text" else None)
        for e in m.largest:
            t.add_row(str(e["doc_id"]), repr(e["doc"]), _g(e["a"]), _g(e["b"]),
                      f"{e['diff']:+.4g}")
        console.print(t)
    for task, n in c.only_in_a.items():
        if n or c.only_in_b.get(task):
            console.print(f"{task}: {n} documents only in A, {c.only_in_b.get(task, 0)} only "
                          "in B (left out)")
    for side, tasks in (("A", c.tasks_only_in_a), ("B", c.tasks_only_in_b)):
        if tasks:
            console.print(f"tasks only in {side} (left out): {', '.join(tasks)}")
