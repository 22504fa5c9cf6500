"""Outputs written incrementally and resumable.

A JSONL output holds one complete line per finished record, flushed as it is written. After
an interruption (Ctrl-C, kill -9) the file may end in a partial line; :func:`open_jsonl_output`
with ``resume=True`` cuts it off and reports how many records are complete, so a rerun skips
them and appends the rest: the final file equals an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import sys
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
        if self.path is not None:
            self.handle.flush()
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
