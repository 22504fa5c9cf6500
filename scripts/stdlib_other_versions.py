"""Signature -> docstring pairs from the standard libraries of the *other* Pythons installed
on the machine (the widen stage of the default model's retrain).

Other versions' stdlibs hold modules this one lacks (removed ones: ``asyncore``,
``formatter``, Python 2's ``urllib2``; new ones: 3.13's ``_pyrepl``) and docstrings rewritten
between versions: stdlib prose that the running Python's corpus does not have. Pairs are
taken as :func:`stdlib_corpus.extract_pairs` takes them (files that do not parse as this
Python's syntax give none), from every ``.py`` file outside ``site-packages`` -- the
``test`` packages included, as the retrain's extra pairs are -- except any file whose path
names a held-out module, and only pairs whose docstring is new: not already a training pair's
and not, once cleaned, a held-out pair's. Newest version first; each docstring once.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import zlib
from collections.abc import Iterable
from pathlib import Path

from stdlib_builtin_pairs import cleaned_docstring
from stdlib_corpus import HELDOUT_MODULES, Pair, SourceFile, extract_pairs, module_of

_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__", "pydoc_data"}


def other_stdlibs() -> list[Path]:
    """Stdlib folders of the other Pythons beside this one (pyenv's versions, the system's
    ``/usr/lib/pythonX.Y``), newest version first; the running Python's own left out."""
    own = Path(os.path.realpath(os.path.dirname(os.__file__)))
    found = set(glob.glob(str(Path(sys.base_prefix).parent / "*" / "lib" / "python[23].*")))
    found |= set(glob.glob("/usr/lib/python[23].*"))
    dirs = [Path(os.path.realpath(d)) for d in found]
    dirs = [d for d in dirs if d != own and (d / "os.py").exists()]

    def version(d: Path) -> tuple[int, ...]:
        m = re.search(r"python(\d+)\.(\d+)$", d.name)
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    return sorted(set(dirs), key=lambda d: (version(d), str(d)), reverse=True)


def other_version_pairs(roots: Iterable[Path], known_docs: Iterable[str],
                        heldout_docs: Iterable[str]) -> tuple[list[Pair], dict[str, int]]:
    """New pairs of the stdlibs ``roots`` (see the module docstring) and how many each gave
    (by the root's path).
    ``known_docs``: training docstrings as written (stripped); ``heldout_docs``: cleaned."""
    seen = {d.strip() for d in known_docs}
    held = set(heldout_docs)
    pairs: list[Pair] = []
    counts: dict[str, int] = {}
    for root in roots:
        before = len(pairs)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(root).as_posix()
                if not name.endswith(".py") or any(h in rel for h in HELDOUT_MODULES):
                    continue
                try:
                    text = path.read_text(encoding="utf-8")
                except (UnicodeDecodeError, OSError):
                    continue
                for p in _pairs(SourceFile(module_of(rel), path, rel, text)):
                    doc = p.response.strip()
                    if doc in seen or cleaned_docstring(p.response) in held:
                        continue
                    seen.add(doc)
                    pairs.append(Pair(id=f"{root.name}/{p.id}", module=p.module,
                                      prompt=p.prompt, response=p.response, kind=p.kind,
                                      indent=p.indent))
        counts[str(root)] = len(pairs) - before
    return pairs, counts


def validation_split(pairs: list[Pair], every: int = 5) -> tuple[list[Pair], list[Pair]]:
    """(train, validation) of :func:`other_version_pairs`' pairs: the pairs of one file in
    ``every`` (by a CRC-32 of the file's path inside its stdlib, so that one file's pairs of
    every version fall on one side) are kept out of training, to pick among trained models
    without looking at the held-out sets."""
    train: list[Pair] = []
    valid: list[Pair] = []
    for p in pairs:
        path = p.id.split("/", 1)[1].rsplit(":", 1)[0]       # "python3.13/a/b.py:Q" -> "a/b.py"
        (valid if zlib.crc32(path.encode()) % every == 0 else train).append(p)
    return train, valid


def _pairs(source: SourceFile) -> list[Pair]:
    import warnings

    with warnings.catch_warnings():              # Python 2 files: invalid escapes, literals
        warnings.simplefilter("ignore")
        return extract_pairs(source)
