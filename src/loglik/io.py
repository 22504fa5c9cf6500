"""Outputs written incrementally and resumable.

A JSONL output holds one complete line per finished record, flushed as it is written. After
an interruption (Ctrl-C, kill -9) the file may end in a partial line; :func:`open_jsonl_output`
with ``resume=True`` cuts it off and reports how many records are complete, so a rerun skips
them and appends the rest: the final file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Mapping
from typing import Any, TextIO

from .errors import InputError


def dumps(record: Mapping[str, Any]) -> str:
    """One JSON line (a -inf log-prob is written as ``-Infinity``, which Python's json reads)."""
    return json.dumps(record, ensure_ascii=False, allow_nan=True, separators=(", ", ": "))


class JsonlWriter:
    """Appends one JSON line per record, flushed (and fsync'd on close)."""

    def __init__(self, handle: TextIO, *, path: str | None, done: int = 0,
                 last_id: Any = None) -> None:
        self.handle, self.path, self.done, self.last_id = handle, path, done, last_id

    def write(self, record: Mapping[str, Any]) -> None:
        self.handle.write(dumps(record) + "\n")
        self.handle.flush()
        self.done += 1

    def close(self) -> None:
        """Flush; fsync and close a file (a device or pipe such as /dev/null is not fsync'd).

        Closing twice is harmless."""
        if self.path is not None and not self.handle.closed:
            self.handle.flush()
            if stat.S_ISREG(os.fstat(self.handle.fileno()).st_mode):
                os.fsync(self.handle.fileno())
            self.handle.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def completed_records(path: str) -> tuple[int, int, Any]:
    """Scan an existing JSONL output: (complete records, byte length to keep, last id)."""
    count, keep, last_id = 0, 0, None
    with open(path, "rb") as handle:
        offset = 0
        for raw in handle:
            offset += len(raw)
            if not raw.endswith(b"\n"):
                break                        # a partial last line: cut it
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise InputError(f"line {count + 1} is not a complete JSON record, but later "
                                 "lines are; this is not a file loglik wrote — move it away or "
                                 "drop --resume", source=path) from None
            count, keep = count + 1, offset
            last_id = record.get("id") if isinstance(record, dict) else None
    return count, keep, last_id


def open_jsonl_output(path: str | None, *, resume: bool = False) -> JsonlWriter:
    """Open ``path`` (``None`` or ``-`` for stdout) for writing records.

    With ``resume``, keep the complete records already there (``writer.done`` of them).
    """
    if path in (None, "-"):
        if resume:
            raise InputError("--resume needs an output file (-o FILE), not stdout")
        return JsonlWriter(sys.stdout, path=None)
    if resume and os.path.exists(path):
        done, keep, last_id = completed_records(path)
        handle = open(path, "r+", encoding="utf-8", newline="\n")
        handle.truncate(keep)
        handle.seek(keep)
        return JsonlWriter(handle, path=path, done=done, last_id=last_id)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"output folder {parent} does not exist", source=path)
    return JsonlWriter(open(path, "w", encoding="utf-8", newline="\n"), path=path)


def check_output(path: str | None, *, resume: bool = False, what: str = "output") -> None:
    """Fail now, in one line, if ``path`` cannot be written (nothing is created or changed).

    ``None`` or ``-`` is stdout. An existing device or pipe (``/dev/null``) takes JSONL; a
    Parquet output and ``resume`` need a regular file.
    """
    if path in (None, "-"):
        if resume:
            raise InputError("--resume needs an output file (-o FILE), not stdout")
        return
    assert path is not None
    if os.path.isdir(path):
        raise InputError(f"the {what} is a folder; pass a file name inside it", source=path)
    if os.path.exists(path):
        regular = stat.S_ISREG(os.stat(path).st_mode)
        if not regular and (resume or is_parquet_path(path)):
            raise InputError(f"the {what} is not a regular file (a device or pipe); "
                             f"{'--resume' if resume else 'Parquet'} needs a file",
                             source=path)
        if not os.access(path, os.W_OK):
            raise InputError(f"the {what} is not writable; choose another file or change "
                             "its permissions", source=path)
        if not regular:
            return
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{what} folder {parent} does not exist; create it first "
                         f"(mkdir -p {parent})", source=path)
    try:     # root passes os.access everywhere: try to create a file where the output goes
        fd, probe = tempfile.mkstemp(dir=parent, prefix=".loglik-probe-")
    except OSError as exc:
        raise InputError(f"cannot write to folder {parent} ({exc.strerror}); choose a "
                         "writable place", source=path) from None
    os.close(fd)
    os.remove(probe)


# -- Parquet -----------------------------------------------------------------------------------
#
# A Parquet file cannot be appended to, and one half-written is unreadable. So the records go
# first into numbered parts, PATH.parts/part-<first record>.parquet, each written to a temporary
# name, fsync'd and renamed (atomic): a part is there completely or not at all. Closing merges
# the parts, in order, into PATH (again through a temporary name and a rename) and removes the
# parts. After a kill -9, ``resume=True`` counts the records of the complete parts and carries
# on with the next part; since parts hold ``part_rows`` records each, the resumed run writes the
# same parts as an uninterrupted one and the merged file is the same, byte for byte.

PARQUET_SUFFIXES = (".parquet", ".pq")


def is_parquet_path(path: str | None) -> bool:
    return path is not None and path.lower().endswith(PARQUET_SUFFIXES)


def parquet_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record with Parquet-friendly types: ``id`` always present (null when absent),
    ``truncated_tokens`` always present, ``token_top`` as a list of {token, logprob} structs."""
    out: dict[str, Any] = {"id": record.get("id")}
    out.update(record)
    out.setdefault("truncated_tokens", 0)
    if "token_top" in out:
        out["token_top"] = [[{"token": t, "logprob": lp} for t, lp in alts]
                            for alts in out["token_top"]]
    return out


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_table_atomically(table: Any, path: str) -> None:
    import pyarrow.parquet as pq

    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        pq.write_table(table, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


class ParquetWriter:
    """Buffers records and writes them as crash-safe parts, merged into ``path`` on close.

    Args:
        path: the output file (``.parquet``).
        part_rows: records per part: at most this many finished records are lost to a kill.
        resume: keep the records of the parts (or of the finished file) already there.
    """

    def __init__(self, path: str, *, part_rows: int = 8192, resume: bool = False) -> None:
        from .errors import ConfigError, require

        self.pa = require("pyarrow", extra="parquet", feature="Parquet output")
        if part_rows < 1:
            raise ConfigError(f"part_rows must be >= 1, got {part_rows}")
        self.path, self.part_rows = path, part_rows
        self.parts_dir = path + ".parts"
        self.done, self.last_id = 0, None
        self._buffer: list[dict[str, Any]] = []
        self._finished = self._closed = False
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise InputError(f"output folder {parent} does not exist", source=path)
        if not resume:
            self._remove_parts()
            if os.path.exists(path):
                os.remove(path)
        elif os.path.isdir(self.parts_dir):
            self._scan_parts()
        elif os.path.exists(path):
            # A finished file: left alone unless more records come (then it is part 0).
            import pyarrow.parquet as pq

            self.done = pq.ParquetFile(path).metadata.num_rows
            self.last_id = _last_id(path, self.done)
            self._finished = True

    def _part_path(self, first: int) -> str:
        return os.path.join(self.parts_dir, f"part-{first:012d}.parquet")

    def _parts(self) -> list[str]:
        names = sorted(n for n in os.listdir(self.parts_dir)
                       if n.startswith("part-") and n.endswith(".parquet"))
        return [os.path.join(self.parts_dir, n) for n in names]

    def _scan_parts(self) -> None:
        import pyarrow.parquet as pq

        for name in os.listdir(self.parts_dir):
            if name.endswith(".tmp"):            # a part the kill interrupted
                os.remove(os.path.join(self.parts_dir, name))
        expected = 0
        for part in self._parts():
            first = int(os.path.basename(part)[5:-8])
            if first != expected:
                raise InputError(f"part {part} starts at record {first}, expected {expected}; "
                                 "the parts folder was changed by hand — remove it and rerun "
                                 "without --resume", source=self.path)
            rows = pq.ParquetFile(part).metadata.num_rows
            expected += rows
            self.last_id = _last_id(part, rows)
        self.done = expected

    def _remove_parts(self) -> None:
        if os.path.isdir(self.parts_dir):
            for name in os.listdir(self.parts_dir):
                os.remove(os.path.join(self.parts_dir, name))
            os.rmdir(self.parts_dir)

    def write(self, record: Mapping[str, Any]) -> None:
        self._buffer.append(parquet_record(record))
        if len(self._buffer) >= self.part_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered records as one part (atomic)."""
        if not self._buffer:
            return
        from .errors import ConfigError

        try:
            table = self.pa.Table.from_pylist(self._buffer)
        except (self.pa.ArrowInvalid, self.pa.ArrowTypeError) as exc:
            raise ConfigError(f"these records do not fit one Parquet column type each ({exc}); "
                              "ids of mixed types (numbers and strings) are the usual cause — "
                              "make them one type or write JSONL (-o out.jsonl)") from None
        os.makedirs(self.parts_dir, exist_ok=True)
        if self._finished:
            os.replace(self.path, self._part_path(0))
            self._finished = False
        _write_table_atomically(table, self._part_path(self.done))
        self.done += len(self._buffer)
        self.last_id = self._buffer[-1].get("id")
        self._buffer = []

    def close(self) -> None:
        """Flush, then merge the parts into ``path`` (atomic) and remove them (once)."""
        if self._closed:
            return
        self._closed = True
        if self._finished and not self._buffer:
            return                                   # resumed a finished file: unchanged
        self.flush()
        os.makedirs(self.parts_dir, exist_ok=True)
        merge_parquet(self._parts(), self.path)
        self._remove_parts()

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _last_id(path: str, rows: int) -> Any:
    import pyarrow.parquet as pq

    if not rows:
        return None
    handle = pq.ParquetFile(path)
    if "id" not in handle.schema_arrow.names:
        return None
    last = handle.read_row_group(handle.num_row_groups - 1, columns=["id"]).column("id")
    return last[len(last) - 1].as_py()


def merge_parquet(parts: list[str], path: str) -> None:
    """Concatenate Parquet files, in order, into ``path`` (atomic; one part in memory at a time).

    Column types are unified across parts (a column that is all null in one part takes the
    type it has in the others); a column missing from a part is null there.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = [pq.read_schema(p) for p in parts]
    schema = (pa.unify_schemas(schemas, promote_options="permissive") if schemas
              else pa.schema([("id", pa.null())]))
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        with pq.ParquetWriter(handle, schema) as writer:
            for part in parts:
                source = pq.ParquetFile(part)
                for group in range(source.num_row_groups):
                    table = source.read_row_group(group)
                    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
                               else pa.nulls(len(table), f.type) for f in schema]
                    writer.write_table(pa.Table.from_arrays(columns, schema=schema))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def open_output(path: str | None, *, resume: bool = False, part_rows: int = 8192
                ) -> JsonlWriter | ParquetWriter:
    """JSONL or, for a ``.parquet`` path, crash-safe Parquet (see :class:`ParquetWriter`)."""
    if is_parquet_path(path):
        return ParquetWriter(path, part_rows=part_rows, resume=resume)   # type: ignore[arg-type]
    return open_jsonl_output(path, resume=resume)
