"""``loglik score DATA``: one output record per input record, in order, resumable."""

from __future__ import annotations

import argparse
import os
from itertools import islice

from .common import add_data_options, add_encode_options, add_model_options, fields_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="score prompt/response pairs from a file",
                       description="Compute log Pr(response | prompt) for every record of DATA "
                       "(JSONL, CSV, Parquet; '-' reads JSONL from stdin).")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", default=None,
                   help="output JSONL (default or '-': stdout), or Parquet for a .parquet name "
                   "(a folder of Parquet shards with --ray)")
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


def count_records(path: str, fmt: str | None) -> int | None:
    """Cheap record count for the progress bar (None when unknown)."""
    from ..data import detect_format

    from ..data import expand_inputs

    shards = expand_inputs(path)
    if len(shards) > 1:
        counts = [count_records(shard, fmt) for shard in shards]
        return None if None in counts else sum(counts)   # type: ignore[arg-type]
    path = shards[0]
    if path == "-" or not os.path.isfile(path):
        return None
    fmt = fmt or detect_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == "jsonl":
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    return None


def run(args: argparse.Namespace) -> int:
    from ..data import read_examples
    from ..errors import InputError
    from ..io import open_output
    from ..progress import Progress
    from ..types import FailedRecord
    from .common import scorer_from_args

    if args.detail:
        args.rank = args.entropy = True
    if args.ray is not None:
        from ..distributed import run_cli

        return run_cli(args)
    fields = fields_from_args(args)
    if args.words and args.text_field:
        from ..errors import ConfigError

        raise ConfigError("--words scores the response of prompt/response records; it does "
                          "not go with --text-field")
    if args.text_field:
        from ..longtext import DOCS_PER_CHUNK, read_documents

        examples = read_documents(args.data, text_field=args.text_field,
                                  id_field=args.id_field, fmt=args.format)
    else:
        examples = read_examples(args.data, fields, args.format)
    scorer = scorer_from_args(args)
    total = count_records(args.data, args.format)
    window = DOCS_PER_CHUNK if args.text_field else scorer.window
    with open_output(args.output, resume=args.resume, part_rows=args.part_rows) as writer:
        # Resume from the start of the window holding the first missing record, so every
        # record is scored in the same batch as in an uninterrupted run (same bits).
        redo = writer.done % window
        resumed = writer.done > 0
        restart = writer.done - redo
        if restart:
            skipped = sum(1 for _ in islice(examples, restart))   # read, validate, drop
            if skipped < restart:
                raise InputError(f"the output already has {writer.done} records but the input "
                                 f"has only {skipped}; is this the same input?",
                                 source=args.output)
        report = None
        if getattr(args, "html", None):
            from ..render.html import ReportCollector

            report = ReportCollector(args.html)
            examples = report.watch(examples)
        with Progress("scoring", total=total, enabled=args.progress) as progress:
            progress.advance(writer.done)
            totals = None
            if args.text_field:
                from ..longtext import CorpusTotals, iter_text_scores

                totals = CorpusTotals()
                scores = iter_text_scores(scorer, examples, stride=args.stride,
                                          max_length=args.max_length, rank=args.rank,
                                          entropy=args.entropy, top_k=args.top_k)
            else:
                options = dict(rank=args.rank, entropy=args.entropy, top_k=args.top_k,
                               on_error=args.on_error)
                if args.words:
                    from ..metrics import iter_scores_with_words

                    scores = iter_scores_with_words(scorer, examples, bits=args.bits, **options)
                else:
                    scores = scorer.iter_scores(examples, **options)
            done, seen, errors = writer.done, restart, 0
            for seen, score in enumerate(scores, start=restart + 1):
                failed = isinstance(score, FailedRecord)
                if report is not None:
                    report.add(score)
                if seen <= done:
                    if seen == done and score.id != writer.last_id:
                        raise InputError(
                            f"record {seen} of the output has id {writer.last_id!r} but the "
                            f"input's has {score.id!r}; resume only with the same input and "
                            "options", source=args.output)
                    continue
                writer.write(score.to_record())
                errors += failed
                if totals is not None:
                    totals.add(score)
                progress.advance()
            if seen < done:
                raise InputError(f"the output already has {done} records but the input has "
                                 f"only {seen}; is this the same input?", source=args.output)
    if errors:
        import sys

        print(f"loglik score: {errors} of {seen - done} records could not be scored; their "
              'output records hold {"id", "error"}', file=sys.stderr)
    if totals is not None:
        import json
        import sys

        from ..longtext import totals_from_output

        if resumed:   # the records kept from before count too
            totals = totals_from_output(args.output)
        print(json.dumps(totals.summary()), file=sys.stderr)
    if report is not None:
        report.write(scorer.tokenizer, model=args.model,
                     color_by="rank" if args.rank else "logprob")
    return 0
