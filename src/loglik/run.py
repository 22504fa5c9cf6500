"""The file job: every record of DATA scored into JSONL or Parquet, in order, resumable.

``loglik score DATA -o OUT`` is one call of :func:`score_file`. What can be checked without a
model is checked first, before torch is imported or a model loaded (a bad file fails in well
under a second, not after the load)::

    output   writable here? (a folder that exists, a file we may create; Parquet needs a
             regular file; devices and pipes take JSONL)
    input    exists, and its first records parse (an empty input ends here: nothing to do)
    resume   the records already in OUT are the input's first ones (count and last id)
    -> load the model -> score -> write, record by record (io.py) -> totals

Resume: the run restarts at the window holding the first missing record and drops the
scores of that window's records already written, so every record is scored in the same
batch as in an uninterrupted run (same bits).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from itertools import chain, islice
from typing import TYPE_CHECKING, Any

from .data import Fields, detect_format, expand_inputs, read_documents, read_examples
from .errors import ConfigError, InputError
from .io import check_output, is_parquet_path, open_output
from .types import Example, FailedRecord, Score

if TYPE_CHECKING:
    from .metrics import CorpusStats
    from .scorer import Scorer

#: records read (and validated) before the model loads
PEEK_RECORDS = 64
#: examples per window when a Scorer is built here (``Scorer(window=...)``'s default)
DEFAULT_WINDOW = 1024


@dataclass
class FileRun:
    """What :func:`score_file` did.

    ``records_kept`` were in the output before (``resume``), ``records_written`` were scored
    now, ``records_failed`` of them as ``{"id", "error"}`` (``on_error="record"``);
    ``totals`` pools the whole output (kept records too).
    """

    output: str | None
    records_kept: int = 0
    records_written: int = 0
    records_failed: int = 0
    totals: CorpusStats | None = None

    @property
    def empty_input(self) -> bool:
        return self.records_kept == 0 and self.records_written == 0

    @property
    def records(self) -> int:
        return self.records_kept + self.records_written


def count_records(path: str, fmt: str | None = None) -> int | None:
    """Cheap record count for the progress bar (None when unknown: stdin, CSV)."""
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


def read_input(inputs: str, *, fields: Fields = Fields(), format: str | None = None,
               text_field: str | None = None, peek: int = PEEK_RECORDS) -> Iterator[Example]:
    """The input's examples (documents with ``text_field``); its first ``peek`` records are
    read and validated now, so a missing file or a malformed line fails before any model
    loads."""
    if text_field:
        examples: Iterator[Example] = read_documents(inputs, text_field=text_field,
                                                     id_field=fields.id, fmt=format)
    else:
        examples = read_examples(inputs, fields, format)
    head = list(islice(examples, peek))
    return chain(head, examples)


def score_file(inputs: str, output: str | None = "-", *, resume: bool = False,
               fields: Fields = Fields(), format: str | None = None,
               text_field: str | None = None, stride: int | None = None,
               max_length: int | None = None, rank: bool = False, entropy: bool = False,
               top_k: int = 0, part_rows: int = 8192, html: str | None = None,
               progress: bool | None = None, scorer: Scorer | str | None = None,
               scorer_options: Mapping[str, Any] | None = None,
               on_score: Callable[[Score], None] | None = None, words: bool = False,
               bits: bool = False, on_error: str = "stop") -> FileRun:
    """Score every record of ``inputs`` and write one output record per input record, in order.

    Args:
        inputs: a JSONL / CSV / Parquet file, a folder or glob of them, or ``-`` (stdin).
        output: a JSONL file, a ``.parquet`` file (crash-safe parts), ``-`` for JSONL on
            stdout, or None to write nothing (scores go to ``on_score`` only).
        resume: keep the records already in ``output`` and score only the rest.
        fields, format: which fields hold prompt/response/id; the input format.
        text_field: score whole documents from this field (log Pr(text), any length, by
            strided windows of ``max_length`` tokens, ``stride`` scored per window).
        rank, entropy, top_k: per-token detail added to each record.
        part_rows: Parquet output: records per crash-safe part.
        html: also write an HTML report of the first 500 records here.
        progress: a progress bar on stderr (None: when stderr is a terminal).
        scorer: a :class:`~loglik.Scorer`, or a model folder / hub id loaded with
            ``scorer_options`` (None: the embedded default model).
        on_score: called with each new :class:`Score` after it is written.
        words, bits: add ``words`` (per-word log-probs, :func:`loglik.metrics.word_records`)
            to each record, in nats or bits (a second pass over each window).
        on_error: ``"stop"`` at a record that cannot be encoded, or ``"record"`` it as
            ``{"id", "error"}`` and go on (``records_failed`` counts them).

    Returns:
        A :class:`FileRun`: records kept and written, and with ``text_field`` the corpus
        totals of the whole output. An input without records returns at once
        (``empty_input``) and loads no model.

    Raises:
        KeyboardInterrupt: on Ctrl-C, after the output is closed; its message says how many
            records the output holds.

    Example:
        >>> run = score_file("pairs.jsonl", "scores.parquet", scorer="gpt2")  # doctest: +SKIP
        >>> run.records_written                                                  # doctest: +SKIP
        6
    """
    if words and text_field:
        raise ConfigError("--words scores the response of prompt/response records; it does "
                          "not go with --text-field")
    if (stride is not None or max_length is not None) and not text_field:
        raise ConfigError("--stride and --max-length apply to documents; pass --text-field")
    check_output(output, resume=resume)
    if html:
        check_output(html, what="HTML report")
    examples = read_input(inputs, fields=fields, format=format, text_field=text_field)
    if text_field:
        from .longtext import DOCS_PER_CHUNK

        window = DOCS_PER_CHUNK
    elif scorer is not None and not isinstance(scorer, str):
        window = scorer.window
    else:
        window = int((scorer_options or {}).get("window", DEFAULT_WINDOW))
    if scorer is None or isinstance(scorer, str):   # a hub id needs the hub: say so now
        from .hub import check_model_source

        check_model_source(scorer, revision=(scorer_options or {}).get("revision"))
    run = FileRun(output)
    writer = None if output is None else open_output(output, resume=resume,
                                                     part_rows=part_rows)
    try:
        done = writer.done if writer is not None else 0
        last_id = writer.last_id if writer is not None else None
        examples, restart = _skip_done(examples, done, last_id, window, output)
        run.records_kept = done
        first = next(examples, None)   # None: an empty input, or all of it already done
        if first is not None:
            model_name = scorer if isinstance(scorer, str) else None
            run.totals = _write_scores(_load(scorer, scorer_options), chain([first], examples),
                                       writer, run, restart=restart, done=done,
                                       text_field=text_field, stride=stride,
                                       max_length=max_length, rank=rank, entropy=entropy,
                                       top_k=top_k, html=html, progress=progress,
                                       total=count_records(inputs, format), on_score=on_score,
                                       model_name=model_name, words=words, bits=bits,
                                       on_error=on_error)
    except KeyboardInterrupt:
        if writer is not None:
            writer.close()
        raise KeyboardInterrupt(_interrupted(output, writer, run)) from None
    finally:
        if writer is not None:
            writer.close()
    if text_field and run.records_kept:   # the records kept count too: read the whole output
        run.totals = totals_from_output(output)   # type: ignore[arg-type]
    return run


def _skip_done(examples: Iterator[Example], done: int, last_id: Any, window: int,
               output: str | None) -> tuple[Iterator[Example], int]:
    """Read past the input's first ``done`` records (checking they match the output's) and
    return the examples from the start of the window holding record ``done + 1``."""
    if not done:
        return examples, 0
    restart = done - done % window
    redo: list[Example] = []
    seen = 0
    for seen, ex in enumerate(examples, start=1):   # read, validate, drop
        if seen > restart:
            redo.append(ex)
        if seen == done:
            if ex.id != last_id:
                raise InputError(f"record {done} of the output has id {last_id!r} but the "
                                 f"input's has {ex.id!r}; resume only with the same input and "
                                 "options", source=output)
            break
    if seen < done:
        raise InputError(f"the output already has {done} records but the input has only "
                         f"{seen}; is this the same input?", source=output)
    return chain(redo, examples), restart


def _load(scorer: Scorer | str | None, options: Mapping[str, Any] | None) -> Scorer:
    if scorer is not None and not isinstance(scorer, str):
        return scorer
    from .scorer import Scorer

    return Scorer.from_pretrained(scorer, **dict(options or {}))


def _write_scores(scorer: Scorer, examples: Iterator[Example], writer: Any, run: FileRun, *,
                  restart: int, done: int, text_field: str | None, stride: int | None,
                  max_length: int | None, rank: bool, entropy: bool, top_k: int,
                  html: str | None, progress: bool | None, total: int | None,
                  on_score: Callable[[Score], None] | None, model_name: str | None,
                  words: bool = False, bits: bool = False, on_error: str = "stop"
                  ) -> CorpusStats | None:
    from .metrics import CorpusTotals
    from .progress import Progress

    report = None
    if html:
        from .render.html import ReportCollector

        report = ReportCollector(html)
        examples = report.watch(examples)
    totals = CorpusTotals() if text_field else None
    with Progress("scoring", total=total, enabled=progress) as bar:
        if text_field:     # a document is several requests: count documents
            from .longtext import iter_text_scores

            bar.advance(done)
            scores = iter_text_scores(scorer, examples, stride=stride, max_length=max_length,
                                      rank=rank, entropy=entropy, top_k=top_k)
        else:              # a pair is one request: count them as each batch finishes
            bar.advance(restart)
            options = dict(rank=rank, entropy=entropy, top_k=top_k, on_error=on_error)
            if words:
                from .metrics import iter_scores_with_words

                scores = iter_scores_with_words(scorer, examples, bits=bits, **options)
            else:
                scores = scorer.iter_scores(examples, **options)
        saved_hook = scorer.on_batch
        if not text_field:
            scorer.on_batch = bar.advance
        try:
            for seen, score in enumerate(scores, start=restart + 1):
                if report is not None:
                    report.add(score)
                if seen <= done:   # re-scored for its batch only: already in the output
                    continue
                if writer is not None:
                    writer.write(score.to_record())
                run.records_written += 1
                if isinstance(score, FailedRecord):
                    run.records_failed += 1
                    continue
                if totals is not None:
                    totals.add(score)
                if text_field:
                    bar.advance()
                if on_score is not None:
                    on_score(score)
        finally:
            scorer.on_batch = saved_hook
    if report is not None:
        report.write(scorer.tokenizer, model=model_name,
                     color_by="rank" if rank else "logprob")
    return totals.stats() if totals is not None else None


def _interrupted(output: str | None, writer: Any, run: FileRun) -> str:
    """Exactly what an interrupted run left in the output."""
    if output is None:
        return f"interrupted after {run.records_written} records"
    if output == "-":
        return f"interrupted; {run.records} records were written to stdout"
    held = writer.done
    if not held:
        return f"interrupted before the first record was finished; {output} holds no records"
    return (f"interrupted; {output} holds the first {held} records "
            f"({run.records_kept} kept from before, {held - run.records_kept} new); rerun "
            "with --resume to score the rest")


def totals_from_output(path: str) -> CorpusStats:
    """Re-read the corpus totals of a finished output (JSONL or Parquet), streaming."""
    from .data import iter_records
    from .metrics import CorpusTotals

    totals = CorpusTotals()
    for _, record in iter_records(path, "parquet" if is_parquet_path(path) else "jsonl"):
        totals.add(record)
    return totals.stats()
