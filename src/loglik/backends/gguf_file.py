"""Read and check a GGUF file's header in Python, before llama.cpp sees it.

llama.cpp aborts the process on some malformed files and prints its reasons to stderr on
others; :func:`read_gguf_header` turns a missing file, a wrong magic number, an unknown
version, a truncated header or truncated tensor data into one
:class:`~loglik.errors.ModelLoadError` line, and returns what the backend needs from the
metadata (architecture, context length, tensor count). Only the header is read: the
key/value section, then the tensor table (names, shapes, types, offsets).

The layout (GGUF v2/v3, little-endian)::

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x (key: string, type: u32, value)          string = u64 length + UTF-8 bytes
    tensor_count x (name: string, n_dims: u32, dims: u64[n_dims], type: u32, offset: u64)
    padding to general.alignment (32) | tensor data (offsets relative to here)
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from ..errors import ModelLoadError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
# value type -> struct format of a scalar (8 = string, 9 = array are read apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_MAX_COUNT = 1 << 24   # more tensors or keys than this is a corrupt count, not a model


@dataclass
class GGUFHeader:
    """What a GGUF file says about itself (arrays other than short ones are skipped)."""

    path: str
    version: int
    tensor_count: int
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str | None:
        return self.metadata.get("general.architecture")

    @property
    def context_length(self) -> int | None:
        value = self.metadata.get(f"{self.architecture}.context_length")
        return int(value) if isinstance(value, int) and value > 0 else None


class _Reader:
    def __init__(self, f: BinaryIO, path: str, size: int) -> None:
        self.f, self.path, self.size = f, path, size

    def take(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise ModelLoadError(f"{self.path}: truncated GGUF file (the header ends at byte "
                                 f"{self.f.tell()} of {self.size}); download or convert it again")
        return data

    def scalar(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.scalar("<Q")
        if n > self.size:
            raise ModelLoadError(f"{self.path}: corrupt GGUF file (a string of {n} bytes in a "
                                 f"file of {self.size}); download or convert it again")
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, kind: int) -> Any:
        if kind in _SCALARS:
            return self.scalar(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.scalar("<I"), self.scalar("<Q")
            if n > self.size:
                raise ModelLoadError(f"{self.path}: corrupt GGUF file (an array of {n} items "
                                     f"in a file of {self.size} bytes)")
            if item in _SCALARS:   # fixed-size items: skip over them unless the array is short
                width = struct.calcsize(_SCALARS[item])
                if n > 64:
                    self.f.seek(n * width, os.SEEK_CUR)
                    return None
                return [self.value(item) for _ in range(n)]
            values = [self.value(item) for _ in range(n)]
            return values if n <= 64 else None
        raise ModelLoadError(f"{self.path}: corrupt GGUF file (unknown value type {kind} in the "
                             "metadata); download or convert it again")


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Check ``path`` is a complete GGUF file and return its header, or raise ModelLoadError."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelLoadError(f"GGUF file {path!r} not found; pass the path of a .gguf file")
    if os.path.isdir(path):
        raise ModelLoadError(f"{path!r} is a directory, not a .gguf file; pass the file itself "
                             "(a model folder is a path that does not end in .gguf)")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        r = _Reader(f, path, size)
        magic = f.read(4)
        if magic != MAGIC:
            raise ModelLoadError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file "
                                 f"with {MAGIC!r}); convert the model with llama.cpp's "
                                 "convert_hf_to_gguf.py")
        version = r.scalar("<I")
        if version not in VERSIONS:
            raise ModelLoadError(f"{path}: GGUF version {version} is not supported (this reader "
                                 f"knows {', '.join(map(str, VERSIONS))}); convert the model again")
        tensors, kv_count = r.scalar("<Q"), r.scalar("<Q")
        if tensors > _MAX_COUNT or kv_count > _MAX_COUNT:
            raise ModelLoadError(f"{path}: corrupt GGUF header ({tensors} tensors, {kv_count} "
                                 "metadata keys); download or convert it again")
        header = GGUFHeader(path, version, tensors)
        for _ in range(kv_count):
            key = r.string()
            header.metadata[key] = r.value(r.scalar("<I"))
        end_of_data = _check_tensor_table(r, header)
    if tensors == 0:
        raise ModelLoadError(f"{path}: the GGUF file holds no tensors (a vocabulary-only file?); "
                             "pass a file with the model's weights")
    if not header.architecture:
        raise ModelLoadError(f"{path}: the GGUF metadata has no general.architecture; convert "
                             "the model again with llama.cpp's convert_hf_to_gguf.py")
    if end_of_data > size:
        raise ModelLoadError(f"{path}: truncated GGUF file: its tensor data ends at byte "
                             f"{end_of_data:,} and the file has {size:,} bytes; download or "
                             "convert it again")
    return header


def _check_tensor_table(r: _Reader, header: GGUFHeader) -> int:
    """Read the tensor table; return the byte where the last tensor's data ends."""
    sizes = _type_sizes()
    last = 0
    for _ in range(header.tensor_count):
        name = r.string()
        n_dims = r.scalar("<I")
        if n_dims > 8:
            raise ModelLoadError(f"{header.path}: corrupt GGUF tensor table (tensor {name!r} "
                                 f"has {n_dims} dimensions)")
        dims = [r.scalar("<Q") for _ in range(n_dims)]
        kind, offset = r.scalar("<I"), r.scalar("<Q")
        count = 1
        for d in dims:
            count *= d
        block, nbytes = sizes.get(kind, (1, 0))   # an unknown type: check its offset only
        last = max(last, offset + count // block * nbytes)
    align = header.metadata.get("general.alignment", 32)
    align = align if isinstance(align, int) and align > 0 else 32
    start = -(-r.f.tell() // align) * align
    return start + last


def _type_sizes() -> dict[int, tuple[int, int]]:
    """ggml type id -> (elements per block, bytes per block), from the ``gguf`` package when
    it is installed (it is in the llamacpp extra), else the float types only."""
    try:
        from gguf import GGML_QUANT_SIZES
    except ImportError:
        return {0: (1, 4), 1: (1, 2), 30: (1, 2)}
    return {int(k): (int(b), int(t)) for k, (b, t) in GGML_QUANT_SIZES.items()}
