"""``loglik score DATA``: one output record per input record, in order, resumable.

Argument parsing and one call of :func:`loglik.run.score_file` (or
:func:`loglik.distributed.score_on_ray` with ``--ray``). On a terminal without ``-o`` the
records are shown as a table (:mod:`loglik.score_table`); piped, with ``-o`` or ``--jsonl``
they are JSONL.
"""

from __future__ import annotations

import argparse

from .common import (add_data_options, add_encode_options, add_model_options, fields_from_args,
                     scorer_kwargs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score prompt/response pairs from a file",
                       description="Compute log Pr(response | prompt) for every record of DATA "
                       "(JSONL, CSV, Parquet; '-' reads JSONL from stdin).")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", default=None,
                   help="output JSONL ('-': stdout), or Parquet for a .parquet name (a folder "
                   "of Parquet shards with --ray); default: a table on a terminal, JSONL on "
                   "stdout otherwise")
    p.add_argument("--jsonl", action="store_true",
                   help="without -o: JSONL on stdout even on a terminal (default: a table)")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished records of OUTPUT and score only the rest")
    p.add_argument("--part-rows", type=int, default=8192,
                   help="Parquet output: records per crash-safe part (default 8192)")
    p.add_argument("--text-field", default=None, metavar="FIELD",
                   help="score whole documents (log Pr(text), any length, by strided windows) "
                   "from FIELD instead of prompt/response pairs; prints corpus perplexity and "
                   "bits per byte on stderr")
    p.add_argument("--stride", type=int, default=None,
                   help="--text-field: tokens scored per window after the first "
                   "(default: half the window)")
    p.add_argument("--max-length", type=int, default=None,
                   help="--text-field: tokens per window (default: the model's context)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray, or the cluster at ADDRESS ('auto' for "
                   "the one 'ray start' made); OUTPUT is a folder of Parquet shards")
    p.add_argument("--num-actors", type=int, default=2,
                   help="--ray: scoring actors, each holding one model (default 2)")
    p.add_argument("--rank", action="store_true", help="add each token's rank")
    p.add_argument("--entropy", action="store_true", help="add each position's entropy (nats)")
    p.add_argument("--detail", action="store_true",
                   help="both --rank and --entropy (full-distribution statistics, no sort)")
    p.add_argument("--top-k", type=int, default=0, help="add the k most probable alternatives")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when stderr is a terminal)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report of the first 500 records "
                   "(tokens coloured by log-prob; --rank, --entropy, --top-k add to it)")
    p.add_argument("--words", action="store_true",
                   help="add words: [{text, logprob, logprob_uncorrected, num_tokens}] per "
                   "record, corrected for word ends (Pimentel & Meister 2024; a second pass)")
    p.add_argument("--bits", action="store_true",
                   help="--words: word log-probs in bits (logprob_bits, ...) instead of nats")
    p.add_argument("--on-error", choices=("stop", "record"), default="stop",
                   help="a record the tokenizer cannot score exactly or that does not fit: "
                   "stop the run (default), or write {\"id\", \"error\"} for it and go on")
    add_data_options(p)
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    if args.detail:
        args.rank = args.entropy = True
    if args.ray is not None:
        return _run_on_ray(args)
    from ..run import score_file
    from .common import is_server_url, scorer_from_args

    table = None
    output = args.output
    if output is None and not args.jsonl and sys.stdout.isatty():
        from ..score_table import ScoreTable

        table = ScoreTable()
    elif output is None:
        output = "-"
    done = score_file(args.data, output, resume=args.resume, fields=fields_from_args(args),
                      format=args.format, text_field=args.text_field, stride=args.stride,
                      max_length=args.max_length, rank=args.rank, entropy=args.entropy,
                      top_k=args.top_k, part_rows=args.part_rows, html=args.html,
                      progress=args.progress,
                      scorer=scorer_from_args(args) if is_server_url(args.model) else args.model,
                      scorer_options=scorer_kwargs(args),
                      on_score=table.add if table is not None else None,
                      words=args.words, bits=args.bits, on_error=args.on_error)
    if done.empty_input:
        print(f"loglik: {args.data} has no records; nothing to score", file=sys.stderr)
        return 0
    if table is not None:
        table.print()
    if done.records_failed:
        print(f"loglik score: {done.records_failed} of {done.records_written} records could "
              'not be scored; their output records hold {"id", "error"}', file=sys.stderr)
    if done.totals is not None:
        import json

        print(json.dumps(done.totals.to_dict()), file=sys.stderr)
    return 0


def _run_on_ray(args: argparse.Namespace) -> int:
    import json
    import sys

    from ..distributed import score_on_ray
    from ..errors import ConfigError

    if args.text_field:
        raise ConfigError("--text-field is not available with --ray yet; score documents on "
                          "one machine, or split them into shards and run one job per shard")
    run = score_on_ray(args.data, args.output, scorer=args.model, address=args.ray or None,
                       num_actors=args.num_actors, fields=fields_from_args(args),
                       fmt=args.format, rank=args.rank, entropy=args.entropy, top_k=args.top_k,
                       resume=args.resume, progress=args.progress,
                       scorer_options=scorer_kwargs(args))
    print(json.dumps({"shards_scored": len(run.shards_scored),
                      "shards_skipped": len(run.shards_skipped), "records": run.records,
                      "seconds": round(run.seconds, 2),
                      "records_per_s": round(run.records_per_s, 1),
                      "startup_s": round(run.startup_s, 2), "actors": len(run.actors_ready_s),
                      "steady_records_per_s": round(run.steady_records_per_s, 1),
                      "num_actors": run.num_actors, "actor_cpus": run.actor_cpus,
                      "actor_gpus": run.actor_gpus}), file=sys.stderr)
    return 0
