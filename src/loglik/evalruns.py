"""Paired comparison of two lm-evaluation-harness runs written with ``--log_samples``.

lm-eval writes, per task, ``samples_<task>_<timestamp>.jsonl`` under ``--output_path``:
one record per document (and filter) with the document's per-sample metric values. Two
runs over the same documents are compared *paired* (each document against itself), which
is what separates a real difference from noise far better than comparing two means:

* per task, filter and metric: the mean of run A and of run B, the mean paired difference
  ``mean_i (a_i − b_i)`` with a percentile-bootstrap interval (documents resampled with
  replacement: :func:`loglik.comparison.bootstrap_sums`), and the fraction of documents on
  which A is higher, B is higher, or they tie;
* the documents that differ most.

Per-sample values are numbers (``acc``, ``exact_match``, the ``perplexity`` of a
loglikelihood task, which is the log-likelihood itself) or, for ``loglikelihood_rolling``
tasks, ``[log-likelihood, weight]`` pairs (``word_perplexity``, ``byte_perplexity``,
``bits_per_byte``); those are compared once, as ``loglikelihood`` (nats per document).
For multiple-choice tasks whose target is the gold index, ``logprob_gold`` (the gold
choice's log-likelihood, nats) is compared too: it tells two models, or two engines,
apart long before accuracy does.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .comparison import bootstrap_sums, percentile_interval
from .errors import ConfigError, InputError

_SAMPLES = re.compile(r"^samples_(?P<task>.+)_(?P<stamp>\d{4}-\d{2}-\d{2}T[\d\-.]+)\.jsonl$")
_ROLLING = ("word_perplexity", "byte_perplexity", "bits_per_byte")


@dataclass
class MetricDiff:
    """One task/filter/metric of run A against run B; differences are A − B."""

    task: str
    filter: str
    metric: str
    num_docs: int
    mean_a: float
    mean_b: float
    diff_mean: float
    ci_low: float
    ci_high: float
    confidence: float
    win_rate_a: float
    win_rate_b: float
    tie_rate: float
    largest: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class RunComparison:
    """The result of :func:`compare_runs`; ``to_dict()`` is ``compare-runs --json``."""

    run_a: str
    run_b: str
    metrics: list[MetricDiff]
    only_in_a: dict[str, int]        # task -> documents found only in run A
    only_in_b: dict[str, int]
    tasks_only_in_a: list[str]
    tasks_only_in_b: list[str]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["metrics"] = [m.to_dict() for m in self.metrics]
        return out


def find_samples(run: str) -> dict[str, str]:
    """task -> the newest ``samples_<task>_*.jsonl`` under the folder ``run`` (recursive)."""
    if not os.path.isdir(run):
        raise ConfigError(f"{run}: not a folder; pass the --output_path of an lm-eval run "
                          "(written with --log_samples)")
    found: dict[str, tuple[str, str]] = {}
    for path in glob.glob(os.path.join(run, "**", "samples_*.jsonl"), recursive=True):
        m = _SAMPLES.match(os.path.basename(path))
        if m and (m["task"] not in found or m["stamp"] > found[m["task"]][0]):
            found[m["task"]] = (m["stamp"], path)
    if not found:
        raise ConfigError(f"{run}: no samples_<task>_<time>.jsonl files; rerun lm-eval (or "
                          "loglik eval) with --output_path and --log_samples")
    return {task: path for task, (_, path) in sorted(found.items())}


def sample_values(record: dict[str, Any]) -> dict[str, float]:
    """The per-sample metric values of one lm-eval sample record, as numbers (nats, 0/1...)."""
    out: dict[str, float] = {}
    for name in record.get("metrics", []):
        value = record.get(name)
        if name in _ROLLING and isinstance(value, list) and value:
            out["loglikelihood"] = float(value[0])
        elif isinstance(value, bool | int | float):
            out[name] = float(value)
    gold = _gold_logprob(record)
    if gold is not None:
        out["logprob_gold"] = gold
    return out


def _gold_logprob(record: dict[str, Any]) -> float | None:
    resps = record.get("filtered_resps")
    target = record.get("target")
    try:
        gold = int(target)                              # type: ignore[arg-type]
        pairs = [(float(r[0]), r[1]) for r in resps]    # type: ignore[union-attr]
    except (TypeError, ValueError, IndexError, KeyError):
        return None
    if len(pairs) < 2 or not 0 <= gold < len(pairs):
        return None
    return pairs[gold][0]


def read_samples(path: str) -> dict[tuple[int, str], dict[str, Any]]:
    """(doc_id, filter) -> record, for one samples file (bad lines name file and line)."""
    out: dict[tuple[int, str], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                key = (int(record["doc_id"]), str(record.get("filter", "none")))
            except (ValueError, KeyError, TypeError) as exc:
                raise InputError(f"not an lm-eval sample record ({exc}); expected JSON with "
                                 "doc_id, metrics and their values", source=path,
                                 line=line_no) from None
            out[key] = record
    return out


def compare_runs(run_a: str, run_b: str, *, tasks: list[str] | None = None,
                 confidence: float = 0.95, num_bootstrap: int = 10_000, seed: int = 0,
                 top: int = 5) -> RunComparison:
    """Compare two lm-eval runs document by document (see the module doc).

    Args:
        run_a, run_b: ``--output_path`` folders of runs written with ``--log_samples``.
        tasks: only these tasks (default: every task found in both runs).
        confidence: level of the bootstrap interval of each mean difference.
        num_bootstrap: resamples of the documents (seeded by ``seed``).
        top: documents with the largest differences to list per metric.

    Example:
        >>> c = compare_runs("runs/base", "runs/tuned")                    # doctest: +SKIP
        >>> [(m.task, m.metric, m.diff_mean) for m in c.metrics]           # doctest: +SKIP
    """
    files_a, files_b = find_samples(run_a), find_samples(run_b)
    common = [t for t in files_a if t in files_b]
    if tasks:
        missing = [t for t in tasks if t not in common]
        if missing:
            raise ConfigError(f"task(s) {missing} are not in both runs; tasks in both: {common}")
        common = [t for t in common if t in tasks]
    if not common:
        raise ConfigError(f"the runs share no task: {run_a} has {sorted(files_a)}, "
                          f"{run_b} has {sorted(files_b)}")
    metrics: list[MetricDiff] = []
    only_a: dict[str, int] = {}
    only_b: dict[str, int] = {}
    for task in common:
        a, b = read_samples(files_a[task]), read_samples(files_b[task])
        keys = sorted(a.keys() & b.keys())
        only_a[task], only_b[task] = len(a.keys() - b.keys()), len(b.keys() - a.keys())
        for key in keys:
            ha, hb = a[key].get("doc_hash"), b[key].get("doc_hash")
            if ha and hb and ha != hb:
                raise ConfigError(f"task {task}, doc_id {key[0]}: the runs hold different "
                                  "documents under the same id (doc_hash differs); compare "
                                  "runs of the same task version and data")
        for filt in sorted({k[1] for k in keys}):
            fkeys = [k for k in keys if k[1] == filt]
            metrics += _task_metrics(task, filt, fkeys, a, b, confidence=confidence,
                                     num_bootstrap=num_bootstrap, seed=seed, top=top)
    return RunComparison(run_a, run_b, metrics, only_a, only_b,
                         sorted(set(files_a) - set(files_b)), sorted(set(files_b) - set(files_a)))


def _task_metrics(task: str, filt: str, keys: list[tuple[int, str]], a: dict, b: dict, *,
                  confidence: float, num_bootstrap: int, seed: int, top: int
                  ) -> list[MetricDiff]:
    vals_a = [sample_values(a[k]) for k in keys]
    vals_b = [sample_values(b[k]) for k in keys]
    names = [n for n in vals_a[0] if all(n in va and n in vb for va, vb in zip(vals_a, vals_b))]
    out = []
    for name in names:
        xa = np.array([v[name] for v in vals_a])                       # (n,)
        xb = np.array([v[name] for v in vals_b])                       # (n,)
        d = xa - xb                                                     # (n,)
        n = len(d)
        boot = bootstrap_sums(d, num_samples=num_bootstrap, seed=seed) / n
        lo, hi = percentile_interval(boot, confidence)
        order = np.argsort(-np.abs(d), kind="stable")[:top]
        largest = [{"doc_id": keys[i][0], "a": float(xa[i]), "b": float(xb[i]),
                    "diff": float(d[i]), "doc": _doc_text(a[keys[i]])}
                   for i in order if d[i] != 0]
        out.append(MetricDiff(task, filt, name, n, float(xa.mean()), float(xb.mean()),
                              math.fsum(d) / n, lo, hi, confidence, float((d > 0).mean()),
                              float((d < 0).mean()), float((d == 0).mean()), largest))
    return out


def _doc_text(record: dict[str, Any], width: int = 60) -> str:
    """The start of a document's first request text, to recognise it in a table."""
    args = record.get("arguments") or {}
    first = next(iter(args.values()), {}) if isinstance(args, dict) else {}
    text = first.get("arg_0", "") if isinstance(first, dict) else ""
    text = str(text).replace("\n", " ")
    return text if len(text) <= width else "…" + text[-(width - 1):]
