"""Where a model comes from: a local folder, the Hugging Face cache, or the hub.

:func:`check_model_source` runs before torch or transformers are imported. A hub id that is
neither a folder nor in the local cache needs the hub: when ``HF_HUB_OFFLINE`` is set, or the
hub's host does not answer within a few seconds, it fails at once with one line instead of
transformers' minute of retries (each printed twice).
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from .errors import ModelLoadError

PROBE_TIMEOUT_S = 3.0


def is_hub_id(name: str) -> bool:
    """``name`` or ``org/name`` that is not an existing path (as the HF loader decides); a
    name ending in ``.gguf`` is a file (a missing one is reported by the GGUF loader)."""
    path = os.path.expanduser(name)
    return not (name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(path)
                or name.lower().endswith(".gguf"))


def _offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return value.strip().lower() in ("1", "true", "yes", "on")


def _cached(name: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:   # a malformed id: the loader reports it
        return False
    return isinstance(found, str)


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    return url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)


def check_model_source(name: str | None, *, revision: str | None = None,
                       timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise :class:`ModelLoadError` (one line) when ``name`` needs a hub that is unreachable.

    None (the embedded model), a local path and a hub id in the local cache pass.
    """
    if name is None or not is_hub_id(name) or _cached(name, revision):
        return
    if _offline():
        raise ModelLoadError(f"model {name!r} is not a local folder and not in the Hugging Face "
                             "cache, and HF_HUB_OFFLINE is set; pass a local model folder, or "
                             "unset HF_HUB_OFFLINE where the hub is reachable")
    host, port = _endpoint()
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ModelLoadError(f"model {name!r} is not a local folder and the Hugging Face hub "
                             f"({host}) cannot be reached ({reason}); the model must be a "
                             "local path or the hub must be reachable") from None
