"""The load-time self-checks' verdicts, remembered per model folder.

:class:`~.backend.HFBackend` checks each fast path against the plain one when it is built (17
small forward passes). For a model loaded from a local folder the verdicts depend only on the
files and the code that runs them, so they are kept in a small JSON file under the cache
folder (``$LOGLIK_CACHE_DIR``, else ``$XDG_CACHE_HOME/loglik``, else ``~/.cache/loglik``),
keyed by a hash of: the folder's config and weight files (name, size, modification time),
the dtype and device type, the model class, the versions of loglik, torch and transformers, and the source of
this backend. A second run
of the same command skips the checks; any change to the model or the code checks again.
``LOGLIK_CACHE_DIR=''`` (empty) turns the cache off.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FIELDS = ("fast", "unmasked_padding", "packing", "kv_sharing")
_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".py", ".jinja")


def cache_dir() -> Path | None:
    """Where verdicts are kept, or None when the cache is off."""
    env = os.environ.get("LOGLIK_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() if env else None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "loglik"


def folder_key(folder: str, *, dtype: Any, device: Any, engine: str = "") -> str | None:
    """A hash naming this model folder's files, the run's dtype/device, the module that runs
    the model (``engine``: its class name) and the code versions; None when ``folder`` is not
    a local folder (a hub id is resolved by transformers)."""
    path = Path(os.path.expanduser(folder))
    if not path.is_dir():
        return None
    from importlib.metadata import version

    import torch

    from ...version import __version__

    h = hashlib.sha256()
    for name in sorted(os.listdir(path)):
        f = path / name
        if f.is_file() and name.endswith(_FILE_SUFFIXES):
            st = f.stat()
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(f"{path.resolve()}|{dtype}|{torch.device(device).type}|{engine}|{__version__}|"
             f"{torch.__version__}|{version('transformers')}".encode())
    for src in sorted(Path(__file__).parent.glob("*.py")):   # the checks' own code
        h.update(src.read_bytes())
    return h.hexdigest()


def load(key: str | None) -> dict[str, bool] | None:
    """The verdicts stored under ``key``, or None (no key, cache off, nothing stored)."""
    folder = cache_dir()
    if key is None or folder is None:
        return None
    try:
        data = json.loads((folder / "selfcheck" / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or set(data) != set(FIELDS) or not all(
            isinstance(v, bool) for v in data.values()):
        return None
    return data


def save(key: str | None, verdicts: dict[str, bool]) -> None:
    """Store ``verdicts`` under ``key`` (atomically; a failure only logs)."""
    folder = cache_dir()
    if key is None or folder is None:
        return
    target = folder / "selfcheck" / f"{key}.json"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({k: bool(verdicts[k]) for k in FIELDS}))
        os.replace(tmp, target)
    except OSError as exc:
        log.info("could not remember the self-check verdicts in %s: %s", target, exc)
