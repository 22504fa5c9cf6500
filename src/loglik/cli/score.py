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
    p.add_argument("-o", "--output", default=None, help="output JSONL (default or '-': stdout)")
    p.add_argument("--resume", action="store_true",
                   help="keep the finished records of OUTPUT and score only the rest")
    p.add_argument("--rank", action="store_true", help="add each token's rank")
    p.add_argument("--entropy", action="store_true", help="add each position's entropy (nats)")
    p.add_argument("--top-k", type=int, default=0, help="add the k most probable alternatives")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when stderr is a terminal)")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report of the first 500 records "
                   "(tokens coloured by log-prob; --rank, --entropy, --top-k add to it)")
    add_data_options(p)
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def count_records(path: str, fmt: str | None) -> int | None:
    """Cheap record count for the progress bar (None when unknown)."""
    from ..data import detect_format

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
    from ..io import open_jsonl_output
    from ..progress import Progress
    from .common import scorer_from_args

    fields = fields_from_args(args)
    examples = read_examples(args.data, fields, args.format)
    scorer = scorer_from_args(args)
    total = count_records(args.data, args.format)
    with open_jsonl_output(args.output, resume=args.resume) as writer:
        # Resume from the start of the window holding the first missing record, so every
        # record is scored in the same batch as in an uninterrupted run (same bits).
        redo = writer.done % scorer.window
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
            scores = scorer.iter_scores(examples, rank=args.rank, entropy=args.entropy,
                                        top_k=args.top_k)
            done, seen = writer.done, restart
            for seen, score in enumerate(scores, start=restart + 1):
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
                progress.advance()
            if seen < done:
                raise InputError(f"the output already has {done} records but the input has "
                                 f"only {seen}; is this the same input?", source=args.output)
    if report is not None:
        report.write(scorer.tokenizer, model=args.model,
                     color_by="rank" if args.rank else "logprob")
    return 0
