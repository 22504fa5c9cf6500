"""Scoring datasets larger than one machine on Ray Data (``loglik score DATA --ray [ADDRESS]``).

The pipeline wraps the single-process scorer; it does not reimplement scoring::

    input shards (a folder or glob of JSONL / CSV / Parquet files)
      -> read: one Ray task per shard (loglik's own readers: same validation, same errors)
      -> map_batches(_ScoreActor, compute=ActorPoolStrategy(size=num_actors)):
           each actor builds one Scorer (any backend) once and runs Scorer.score_many on its
           batches: tokenize, plan, forward
      -> one Parquet file per input shard, in input order, in the output folder

Every output file is written under a temporary name and renamed when its shard is complete,
so after a crash ``resume=True`` skips exactly the shards whose file exists (shard-granular
resume) and rescores the rest. Rows keep input order (``preserve_order``) so each output file
holds its shard's records in order, like the single-process run.

Resources: with GPUs in the cluster each actor takes ``num_gpus=1`` and scores on CUDA;
otherwise the CPUs are shared among the actors, less a quarter CPU for the read tasks and a
quarter for the driver: a fraction of a CPU each on a small machine (a whole CPU per actor
there leaves nothing for the read tasks and the pipeline hangs: ray-project/ray issue 44687),
and ``floor(actor_cpus)`` torch threads each on a big one.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .data import Fields, expand_inputs, iter_records, record_to_example
from .errors import ConfigError, InputError, require

READ_CPUS = 0.25   # per read task


@dataclass
class RayRun:
    """What a run did: shards scored now and skipped (already done), records, seconds."""

    shards_scored: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0            # from submitting the pipeline to the last record
    first_record_s: float = 0.0     # until the first scored batch is back
    actors_ready_s: dict[int, float] = field(default_factory=dict)   # actor pid -> seconds
                                    # from the start until its model was loaded (start-up)
    num_actors: int = 0
    actor_cpus: float = 0.0
    actor_gpus: float = 0.0

    @property
    def records_per_s(self) -> float:
        """Overall rate, start-up included."""
        return self.records / self.seconds if self.seconds else 0.0

    @property
    def startup_s(self) -> float:
        """Seconds until every actor that scored had its model loaded."""
        return max(self.actors_ready_s.values(), default=0.0)

    @property
    def steady_records_per_s(self) -> float:
        """Rate from the first actor ready to the last record (start-up excluded)."""
        span = self.seconds - min(self.actors_ready_s.values(), default=0.0)
        return self.records / span if span > 0 else 0.0


def output_names(shards: list[str]) -> list[str]:
    """``data/a/part-1.jsonl`` -> ``a__part-1.parquet``: one unique output name per shard."""
    from .data import _DATA_SUFFIXES

    paths = [os.path.abspath(s) for s in shards]
    root = os.path.dirname(paths[0]) if len(paths) == 1 else os.path.commonpath(paths)
    names = []
    for path in paths:
        rel = os.path.relpath(path, root)
        for suffix in _DATA_SUFFIXES:
            if rel.lower().endswith(suffix):
                rel = rel[:-len(suffix)]
                break
        names.append(rel.replace(os.sep, "__") + ".parquet")
    if len(set(names)) != len(names):
        raise InputError("two input shards map to the same output name (same name, different "
                         "suffix?); rename one", source=shards[0])
    return names


def _read_shard(item: dict[str, Any], *, fields: Fields, fmt: str | None
                ) -> Iterator[dict[str, Any]]:
    """One Ray read task: a shard's records as rows (id as JSON, to keep its type)."""
    path = item["path"]
    for row, (line, record) in enumerate(iter_records(path, fmt)):
        ex = record_to_example(record, fields, source=path, line=line)
        # a conversation or token ids travel as JSON beside the text (one column type)
        given = {k: getattr(ex, k) for k in ("messages", "prompt_ids", "response_ids")
                 if getattr(ex, k) is not None}
        yield {"shard": item["shard"], "row": row, "line": line, "prompt": ex.prompt,
               "response": ex.response, "id": json.dumps(ex.id), "given": json.dumps(given)}


class _ScoreActor:
    """Holds one Scorer for the life of the actor; scores one batch of rows per call."""

    def __init__(self, factory: Callable[[], Any], sources: list[str], detail: dict[str, Any],
                 threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.scorer = factory()
        self.sources, self.detail = sources, detail
        self.pid, self.ready = os.getpid(), time.time()

    def __call__(self, batch: Any) -> dict[str, list[Any]]:
        from .types import Example

        rows = batch.to_pylist()
        examples = [Example(r["prompt"], r["response"], id=json.loads(r["id"]),
                            source=self.sources[r["shard"]], line=r["line"],
                            **{k: tuple(v) for k, v in json.loads(r["given"]).items()})
                    for r in rows]
        scores = self.scorer.score_many(examples, **self.detail)
        return {"shard": [r["shard"] for r in rows], "row": [r["row"] for r in rows],
                "record": [json.dumps(s.to_record(), allow_nan=True) for s in scores],
                "actor": [self.pid] * len(rows), "ready": [self.ready] * len(rows)}


def _resources(ray: Any, num_actors: int, actor_cpus: float | None,
               actor_gpus: float | None) -> tuple[float, float]:
    cluster = ray.cluster_resources()
    if actor_gpus is None:
        actor_gpus = 1.0 if cluster.get("GPU", 0) >= 1 else 0.0
    if actor_cpus is None:
        if actor_gpus:
            actor_cpus = 1.0
        else:   # leave room for the read tasks (ray-project/ray issue 44687)
            free = cluster.get("CPU", 1) - READ_CPUS - 0.25
            actor_cpus = round(max(0.1, free / num_actors), 2)
    return actor_cpus, actor_gpus


def score_on_ray(data: str, output: str, *, scorer: str | Callable[[], Any] | None = None,
                 address: str | None = None, num_actors: int = 2,
                 actor_cpus: float | None = None, actor_gpus: float | None = None,
                 batch_size: int = 1024, block_bytes: int = 256 * 1024,
                 actor_start_timeout_s: int = 600, fields: Fields = Fields(), fmt: str | None = None,
                 rank: bool = False, entropy: bool = False, top_k: int = 0,
                 resume: bool = False, progress: bool | None = None,
                 scorer_options: dict[str, Any] | None = None) -> RayRun:
    """Score every record of ``data`` with a pool of Ray actors; one Parquet file per shard.

    Args:
        data: a file, a folder or a glob of JSONL / CSV / Parquet shards.
        output: the output folder (created); ``<shard name>.parquet`` per input shard.
        scorer: a model folder or hub id (loaded with :meth:`Scorer.from_pretrained` and
            ``scorer_options`` in each actor), or a picklable zero-argument callable that
            returns a Scorer with any backend. None: the embedded default model.
        address: the Ray cluster (``"auto"``, ``"ray://host:10001"``); None or ``""`` starts
            a local Ray, or joins the one ``RAY_ADDRESS`` names. An already initialised Ray
            is used as it is.
        num_actors: scoring actors, each holding one model.
        actor_cpus, actor_gpus: resources per actor (default: one GPU each when the cluster
            has GPUs, else a fraction of a CPU that leaves room for the read tasks).
        batch_size: rows per actor call.
        block_bytes: the size at which read output is cut into blocks. A block goes to one
            actor, so a shard is spread over the actors only if it makes several blocks
            (Ray's default, 128 MiB, would give one actor a whole shard of short pairs).
        actor_start_timeout_s: scoring starts once every actor has loaded its model; a
            cluster that cannot host ``num_actors`` of them fails after this long instead of
            waiting for ever.
        resume: keep the output files of shards already done and score only the others.

    Returns:
        A :class:`RayRun` with the shards scored and skipped, record count and throughput.

    Example:
        >>> score_on_ray("shards/", "scores/", scorer="gpt2", num_actors=4)  # doctest: +SKIP
    """
    ray = require("ray", extra="ray", feature="--ray (scoring on Ray Data)")
    require("ray.data", extra="ray", feature="--ray (scoring on Ray Data)")
    if num_actors < 1:
        raise ConfigError(f"num_actors must be >= 1, got {num_actors}")
    if output in (None, "-") or output.lower().endswith((".jsonl", ".json")):
        raise ConfigError(f"--ray writes a folder of Parquet shards; pass -o FOLDER, got "
                          f"{output!r}")
    shards = expand_inputs(data)
    if shards == ["-"]:
        raise ConfigError("--ray reads files, not stdin; pass a file, folder or glob")
    names = output_names(shards)
    finals = [os.path.join(output, n) for n in names]
    os.makedirs(output, exist_ok=True)
    for leftover in os.listdir(output):        # shards a crash interrupted
        if ".tmp" in leftover:
            _remove(os.path.join(output, leftover))
    done = [os.path.exists(f) for f in finals]
    if any(done) and not resume:
        raise InputError("the output folder already has scored shards; pass --resume to keep "
                         "them and score the rest, or choose another folder", source=output)
    run = RayRun(shards_skipped=[s for s, d in zip(shards, done) if d], num_actors=num_actors)
    pending = [i for i, d in enumerate(done) if not d]
    if not pending:
        return run

    if not ray.is_initialized():
        import logging

        ray.init(address=address or None, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    actor_cpus, actor_gpus = _resources(ray, num_actors, actor_cpus, actor_gpus)
    run.actor_cpus, run.actor_gpus = actor_cpus, actor_gpus
    options = dict(scorer_options or {})
    if actor_gpus and options.get("device", "cpu") == "cpu":
        options["device"] = "cuda"
    factory = scorer if callable(scorer) else _Factory(scorer, options)
    threads = max(1, int(actor_cpus))

    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
             ctx.target_max_block_size, ctx.wait_for_min_actors_s)
    ctx.execution_options.preserve_order = True     # output files in input order
    ctx.enable_progress_bars = False                # loglik reports progress itself
    ctx.target_max_block_size = block_bytes         # several blocks per shard: all actors busy
    ctx.wait_for_min_actors_s = actor_start_timeout_s   # all actors loaded, then score
    try:
        _run_pipeline(ray, dict(shards=shards, pending=pending, finals=finals,
                                           fields=fields, fmt=fmt, factory=factory,
                                           detail=dict(rank=rank, entropy=entropy,
                                                       top_k=top_k),
                                           threads=threads, batch_size=batch_size,
                                           num_actors=num_actors, actor_cpus=actor_cpus,
                                           actor_gpus=actor_gpus, progress=progress), run)
    finally:
        (ctx.execution_options.preserve_order, ctx.enable_progress_bars,
         ctx.target_max_block_size, ctx.wait_for_min_actors_s) = saved
    return run


def _run_pipeline(ray: Any, a: dict[str, Any], run: RayRun) -> None:
    """Build the Ray Data pipeline and write its rows, shard by shard, as they arrive."""
    from ray.data import ActorPoolStrategy

    from .io import ParquetWriter
    from .progress import Progress
    from .run import count_records

    shards, pending, finals = a["shards"], a["pending"], a["finals"]
    ds = ray.data.from_items([{"shard": i, "path": shards[i]} for i in pending],
                             override_num_blocks=len(pending))
    ds = ds.flat_map(_read_shard, fn_kwargs=dict(fields=a["fields"], fmt=a["fmt"]),
                     num_cpus=READ_CPUS)
    ds = ds.map_batches(_ScoreActor, batch_size=a["batch_size"], batch_format="pyarrow",
                        compute=ActorPoolStrategy(size=a["num_actors"]),
                        fn_constructor_kwargs=dict(factory=a["factory"], sources=shards,
                                                   detail=a["detail"], threads=a["threads"]),
                        num_cpus=a["actor_cpus"], num_gpus=a["actor_gpus"])
    counts = [count_records(shards[i], a["fmt"]) for i in pending]
    total = None if None in counts else sum(counts)   # type: ignore[arg-type]
    start, wall = time.monotonic(), time.time()
    queue = list(pending)       # shards not finished, in order
    writer: ParquetWriter | None = None
    current = -1
    with Progress("scoring on ray", total=total, enabled=a["progress"]) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not run.records:
                run.first_record_s = time.monotonic() - start
            if len(batch):
                pid, ready = batch.column("actor")[0].as_py(), batch.column("ready")[0].as_py()
                run.actors_ready_s.setdefault(pid, max(0.0, ready - wall))
            for shard, record in zip(batch.column("shard").to_pylist(),
                                     batch.column("record").to_pylist()):
                if shard != current:
                    if writer is not None:
                        _finish(writer, finals[current], run, shards[current])
                    while queue and queue[0] < shard:      # shards with no records
                        empty = queue.pop(0)
                        _write_empty(finals[empty], run, shards[empty])
                    queue.pop(0)
                    current = shard
                    writer = ParquetWriter(finals[shard] + ".tmp")
                writer.write(json.loads(record))
                run.records += 1
                bar.advance()
        if writer is not None:
            _finish(writer, finals[current], run, shards[current])
        for i in queue:
            _write_empty(finals[i], run, shards[i])
    run.seconds = time.monotonic() - start


class _Factory:
    """A picklable ``Scorer.from_pretrained(model, **options)`` for the actors."""

    def __init__(self, model: str | None, options: dict[str, Any]) -> None:
        self.model, self.options = model, options

    def __call__(self) -> Any:
        from .scorer import Scorer

        return Scorer.from_pretrained(self.model, **self.options)


def _finish(writer: Any, final: str, run: RayRun, shard: str) -> None:
    writer.close()
    os.replace(writer.path, final)
    run.shards_scored.append(shard)


def _write_empty(final: str, run: RayRun, shard: str) -> None:
    """A shard without records still gets its (empty) file, so resume knows it is done."""
    from .io import ParquetWriter

    _finish(ParquetWriter(final + ".tmp"), final, run, shard)


def _remove(path: str) -> None:
    if os.path.isdir(path):
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
        os.rmdir(path)
    else:
        os.remove(path)
