"""Input records (JSONL, CSV, Parquet, stdin, Python objects) to :class:`Example`.

A record holds ``prompt``/``response`` text, or ``prompt_ids``/``response_ids`` (token ids,
scored as given), or ``messages`` (a conversation, :mod:`loglik.chat`).

Readers stream: they never hold a file in memory. Every error names the file, the line (or
row) and the field, and says how to fix it.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import InputError
from .types import Example

FORMATS = ("jsonl", "csv", "parquet")


@dataclass(frozen=True)
class Fields:
    """Which record fields hold the prompt, the response and the id."""

    prompt: str = "prompt"
    response: str = "response"
    id: str = "id"
    prompt_ids: str = "prompt_ids"
    response_ids: str = "response_ids"
    messages: str = "messages"


def detect_format(path: str) -> str:
    """``jsonl`` for ``-``, ``.jsonl``/``.json``/``.ndjson``; ``csv``; ``parquet``."""
    if path == "-":
        return "jsonl"
    suffixes = [s.lower() for s in Path(path).suffixes]
    for s in reversed(suffixes):
        if s in (".jsonl", ".json", ".ndjson"):
            return "jsonl"
        if s in (".csv", ".tsv"):
            return "csv"
        if s in (".parquet", ".pq"):
            return "parquet"
    raise InputError(f"cannot tell the format from the file name; pass --format "
                     f"({', '.join(FORMATS)})", source=path)


def iter_records(path: str, fmt: str | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line_or_row_number, record)`` from a file; ``-`` reads JSONL from stdin."""
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}", source=path)
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    if path == "-":
        stream: BinaryIO = sys.stdin.buffer
        yield from (_jsonl_records(stream, "<stdin>") if fmt == "jsonl"
                    else _csv_records(stream, "<stdin>"))
        return
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", source=path) from None
    with handle:
        yield from (_jsonl_records(handle, path) if fmt == "jsonl" else _csv_records(handle, path))


def _jsonl_records(stream: BinaryIO, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError(f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column "
                             f"{exc.start + 1}); re-encode the file as UTF-8",
                             source=source, line=number) from None
        text = text.rstrip("\r\n")   # else an error at the line's end reads "line 2 column 1"
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON: {exc.msg} at column {exc.pos + 1}; each line must "
                             "be one JSON object", source=source, line=number) from None
        if not isinstance(record, dict):
            raise InputError(f"expected a JSON object, got {type(record).__name__}",
                             source=source, line=number)
        yield number, record


def _csv_records(stream: BinaryIO, source: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Rows as dicts keyed by the header; the line number is where the row starts.

    Strict: a quote never closed (the rest of the file would be swallowed into one field), a
    row whose cell count differs from the header's, a duplicate or empty header name are
    errors that name the line, never rows lost or shifted in silence.
    """
    text = io.TextIOWrapper(stream, encoding="utf-8", errors="strict", newline="")
    reader = csv.reader(text, strict=True)
    start = 1                              # the line the next row starts on
    header: list[str] | None = None
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row:
                continue                   # a blank line
            if header is None:
                header = _csv_header(row, source, line)
                continue
            if len(row) != len(header):
                raise InputError(f"{len(row)} cells but the header has {len(header)} columns "
                                 f"({', '.join(header)}); quote cells that contain commas",
                                 source=source, line=line)
            yield line, dict(zip(header, row))
    except UnicodeDecodeError as exc:
        raise InputError(f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}) near line "
                         f"{reader.line_num + 1}; re-encode the file as UTF-8",
                         source=source, line=reader.line_num + 1) from None
    except csv.Error as exc:
        if "unexpected end of data" in str(exc):
            raise InputError("a quoted cell starts on this line and its closing quote never "
                             "comes (the file ends inside it); close the quote, or double a "
                             'quote that is part of the text ("")',
                             source=source, line=start) from None
        raise InputError(f"malformed CSV: {exc}; quote cells that contain quotes and double "
                         'the quotes inside them ("")', source=source, line=start) from None


def _csv_header(row: list[str], source: str, line: int) -> list[str]:
    seen: set[str] = set()
    for n, name in enumerate(row, start=1):
        if not name.strip():
            raise InputError(f"header column {n} has no name; every column needs one",
                             source=source, line=line)
        if name in seen:
            raise InputError(f'header names column "{name}" twice; rename one',
                             source=source, line=line)
        seen.add(name)
    return row


def _parquet_records(path: str) -> Iterator[tuple[int, dict[str, Any]]]:
    from .errors import require

    pq = require("pyarrow.parquet", extra="parquet", feature="reading Parquet")
    try:
        handle = pq.ParquetFile(path)
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except Exception as exc:  # pyarrow.ArrowInvalid and friends
        raise InputError(f"not a readable Parquet file: {exc}", source=path) from None
    row = 0
    for batch in handle.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield row, record


def string_field(record: Mapping[str, Any], name: str, *, hint: str = "",
                 source: str | None = None, line: int | None = None) -> str:
    """``record[name]``, which must be present and a string; else an InputError saying where.

    ``hint`` ends the missing-field message (for example "; pass --text-field NAME").
    """
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: '
                         f'{", ".join(record) or "none"}){hint}',
                         source=source, line=line, field=name)
    value = record[name]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise InputError(f'field "{name}" must be a string, got {kind} '
                         f"({json.dumps(value, default=str)[:40]})",
                         source=source, line=line, field=name)
    return value


def ids_field(record: Mapping[str, Any], name: str, *, source: str | None = None,
              line: int | None = None) -> tuple[int, ...]:
    """``record[name]`` as token ids: a list of non-negative integers; else an InputError."""
    if name not in record:
        raise InputError(f'missing field "{name}" (fields present: {", ".join(record)}); '
                         "token-id records need both prompt_ids and response_ids",
                         source=source, line=line, field=name)
    value = record[name]
    if hasattr(value, "tolist"):   # a numpy array from Parquet
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        kind = "null" if value is None else type(value).__name__
        raise InputError(f'field "{name}" must be a list of token ids, got {kind}',
                         source=source, line=line, field=name)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f'field "{name}" item {i} must be a non-negative integer token id, '
                             f"got {json.dumps(v, default=str)[:40]}",
                             source=source, line=line, field=name)
    return tuple(value)


def record_to_example(record: Mapping[str, Any], fields: Fields = Fields(), *,
                      source: str | None = None, line: int | None = None) -> Example:
    """Validate one record's fields and build an :class:`Example`.

    A record with ``prompt_ids``/``response_ids`` (and no prompt text) is scored from its
    token ids; one with ``messages`` (and no prompt text) is a conversation.
    """
    if fields.prompt not in record:
        if fields.prompt_ids in record or fields.response_ids in record:
            return Example("", "", id=record.get(fields.id), source=source, line=line,
                           prompt_ids=ids_field(record, fields.prompt_ids, source=source,
                                                line=line),
                           response_ids=ids_field(record, fields.response_ids, source=source,
                                                  line=line))
        if fields.messages in record:
            return Example("", "", id=record.get(fields.id), source=source, line=line,
                           messages=messages_field(record, fields.messages, source=source,
                                                   line=line))
    values = []
    for name, flag in ((fields.prompt, "--prompt-field"), (fields.response, "--response-field")):
        other = [f for f in record if f not in (fields.prompt, fields.response, fields.id)]
        hint = f"; pass {flag} {other[0]}" if other else ""
        values.append(string_field(record, name, hint=hint, source=source, line=line))
    return Example(values[0], values[1], id=record.get(fields.id), source=source, line=line)


def read_records(path: str, fmt: str | None = None) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """``(source, line, record)`` of a file, a folder or glob of shards, or ``-`` (stdin).

    The one reading layer: every reader of records (examples, documents, choice rows,
    ``--check`` files) is built on it, so all of them accept files, folders and globs.
    """
    for shard in expand_inputs(path):
        source = "<stdin>" if shard == "-" else shard
        for line, record in iter_records(shard, fmt):
            yield source, line, record


def read_examples(path: str, fields: Fields = Fields(), fmt: str | None = None
                  ) -> Iterator[Example]:
    """Stream the examples of a file, a folder or glob of shards, or ``-`` (JSONL on stdin)."""
    for source, line, record in read_records(path, fmt):
        yield record_to_example(record, fields, source=source, line=line)


def read_documents(path: str, *, text_field: str | None = "text", id_field: str = "id",
                   fmt: str | None = None) -> Iterator[Example]:
    """Stream documents as ``Example("", text)`` from a file, folder or glob.

    A ``.txt`` shard (or any shard when ``text_field`` is None) is plain text whose documents
    are separated by blank lines; record shards give one document per record, from
    ``text_field``.
    """
    for shard in expand_inputs(path):
        if text_field is None or shard.lower().endswith(".txt"):
            yield from txt_documents(shard)
            continue
        source = "<stdin>" if shard == "-" else shard
        for line, record in iter_records(shard, fmt):
            text = string_field(record, text_field, hint="; pass --text-field NAME",
                                source=source, line=line)
            yield Example("", text, id=record.get(id_field), source=source, line=line)


def txt_documents(path: str) -> Iterator[Example]:
    """The blank-line separated documents of a plain text file (line = a document's first)."""
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file", source=path) from None
    except OSError as exc:
        raise InputError(f"cannot open: {exc.strerror}", source=path) from None
    lines: list[str] = []
    start = 1
    with handle:
        try:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    if not lines:
                        start = number
                    lines.append(line)
                elif lines:
                    yield Example("", "".join(lines).rstrip("\n"), source=path, line=start)
                    lines = []
        except UnicodeDecodeError:
            raise InputError("not valid UTF-8; re-encode the file as UTF-8", source=path) from None
    if lines:
        yield Example("", "".join(lines).rstrip("\n"), source=path, line=start)


_DATA_SUFFIXES = (".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".txt")


def expand_inputs(path: str) -> list[str]:
    """The shard files a DATA argument names, in order.

    A file (or ``-``) is itself; a folder gives its data files (by suffix, recursively, sorted,
    skipping names that start with ``.`` or ``_`` such as ``_SUCCESS``); a glob pattern
    (``data/*.parquet``, ``data/**/*.jsonl``) gives the files it matches, sorted.
    """
    import glob
    import os

    if path == "-" or os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith((".", "_"))]
            found += [os.path.join(root, f) for f in files if not f.startswith((".", "_"))
                      and f.lower().endswith(_DATA_SUFFIXES)]
        if not found:
            raise InputError(f"the folder has no data files ({', '.join(_DATA_SUFFIXES)})",
                             source=path)
        return sorted(found)
    if glob.has_magic(path):
        found = sorted(f for f in glob.glob(path, recursive=True) if os.path.isfile(f))
        if not found:
            raise InputError("no file matches this pattern", source=path)
        return found
    return [path]   # not there: iter_records says so


def to_examples(items: Iterable[Any], fields: Fields = Fields()) -> Iterator[Example]:
    """Accept Examples, ``(prompt, response)`` pairs or dicts from Python code."""
    for n, item in enumerate(items, start=1):
        if isinstance(item, Example):
            yield item
        elif isinstance(item, Mapping):
            yield record_to_example(item, fields, source="<python>", line=n)
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            yield record_to_example({fields.prompt: item[0], fields.response: item[1]}, fields,
                                    source="<python>", line=n)
        else:
            raise InputError(f"expected a (prompt, response) pair, a dict or an Example, got "
                             f"{type(item).__name__}", source="<python>", line=n)


ROLES = ("system", "user", "assistant", "tool", "developer")


def messages_field(record: Mapping[str, Any], name: str, *, source: str | None = None,
                   line: int | None = None, needs_assistant: bool = True
                   ) -> tuple[dict[str, Any], ...]:
    """``record[name]`` as a conversation; an InputError says which message is wrong.

    ``needs_assistant=False``: a history without an assistant message is fine (``choose``
    appends each candidate as the final assistant message).
    """
    value = record[name]
    if isinstance(value, str):   # a CSV cell or a Parquet string column holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise InputError(f'field "{name}" must be a list of messages '
                             '[{"role": ..., "content": ...}], got a string that is not JSON',
                             source=source, line=line, field=name) from None
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not value:
        raise InputError(f'field "{name}" must be a non-empty list of messages '
                         '[{"role": ..., "content": ...}]', source=source, line=line,
                         field=name)
    out = []
    for i, msg in enumerate(value):
        where = f'field "{name}" message {i}'
        if not isinstance(msg, Mapping):
            raise InputError(f"{where} must be an object with role and content, got "
                             f"{type(msg).__name__}", source=source, line=line, field=name)
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise InputError(f"{where}: role must be one of {', '.join(ROLES)}, got "
                             f"{json.dumps(role, default=str)[:40]}", source=source, line=line,
                             field=name)
        if not isinstance(content, str):
            raise InputError(f"{where}: content must be a string, got "
                             f"{'null' if content is None else type(content).__name__}",
                             source=source, line=line, field=name)
        out.append(dict(msg))
    if needs_assistant and not any(m["role"] == "assistant" for m in out):
        raise InputError(f'field "{name}" has no assistant message to score (roles: '
                         f'{", ".join(m["role"] for m in out)})', source=source, line=line,
                         field=name)
    return tuple(out)
