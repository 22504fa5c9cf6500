"""The default model's corpus: the running Python's standard library, split by module.

Every machine with Python has it, so the embedded model can be rebuilt offline anywhere:

* **source**: every ``.py`` file of the standard library (code, comments, docstrings), except
  the ``test`` package (the stdlib's own test suite), ``idlelib``/``lib2to3``/``turtledemo``
  (applications and a removed tool), ``site-packages`` and ``pydoc_data`` (whose prose is
  taken as text instead);
* **prose**: the values of ``pydoc_data.topics.topics`` (the language reference), training
  text only;
* **pairs**: for each function, method and class with a docstring, prompt = its signature
  (decorators, the enclosing class's header for methods, the ``def``/``class`` lines as
  written) and response = its docstring literal as written (quotes and indentation
  included). The prompt ends with a newline, which the scorer moves to the front of the
  response (``whitespace="move"``).

A *module* is a top-level ``.py`` file or a top-level package folder of the stdlib; the
modules in :data:`HELDOUT_MODULES` are held out (never trained on), all others are training
data.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Held out, by module: a fixed list (changing it changes every held-out figure). Chosen to
# cover prose-heavy docstrings (argparse, textwrap), numeric code (fractions, statistics),
# protocols (ftplib, imaplib, smtplib), data structures (heapq, bisect), file formats
# (gzip, zipfile, csv) and a package (json); about 6% of the source.
HELDOUT_MODULES: tuple[str, ...] = (
    "argparse", "bisect", "calendar", "csv", "difflib", "fractions", "ftplib", "gzip",
    "heapq", "imaplib", "json", "smtplib", "statistics", "textwrap", "zipfile",
)

EXCLUDED_MODULES: frozenset[str] = frozenset({
    "test", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages",
    "pydoc_data", "__pycache__", "__phello__",
})

# Pairs: docstrings of at most this many lines/characters (longer ones are cut at a line
# boundary with the closing quotes kept off, so they stay a realistic prefix).
MAX_DOC_LINES = 24
MAX_DOC_CHARS = 1200
MIN_DOC_CHARS = 12


@dataclass(frozen=True)
class SourceFile:
    module: str          # top-level module or package name
    path: Path
    relpath: str         # relative to the stdlib folder, '/'-separated
    text: str


@dataclass(frozen=True)
class Pair:
    id: str              # "relpath:qualname"
    module: str
    prompt: str          # signature (decorators, enclosing class header), ends with "\n"
    response: str        # the docstring literal as written, with its indentation
    kind: str            # "function", "method" or "class"
    indent: int          # columns before the docstring's opening quotes

    def record(self) -> dict[str, object]:
        return {"id": self.id, "module": self.module, "kind": self.kind,
                "indent": self.indent, "prompt": self.prompt, "response": self.response}


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def module_of(relpath: str) -> str:
    first = relpath.split("/", 1)[0]
    return first[:-3] if first.endswith(".py") else first


def iter_source_files(root: Path | None = None) -> Iterator[SourceFile]:
    """Every stdlib ``.py`` file outside :data:`EXCLUDED_MODULES`, in a sorted, stable order."""
    root = root or stdlib_dir()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        dirnames[:] = sorted(d for d in dirnames
                             if not (rel_dir == "." and d in EXCLUDED_MODULES)
                             and d != "__pycache__")
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            relpath = name if rel_dir == "." else f"{rel_dir}/{name}"
            module = module_of(relpath)
            if module in EXCLUDED_MODULES:
                continue
            path = Path(dirpath) / name
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            yield SourceFile(module, path, relpath, text)


#: Excluded from the source corpus (applications, the test suite, a removed tool) but still
#: stdlib code: the retrain stages take their signature -> docstring pairs as extra
#: conditional examples (:func:`iter_extra_files`).
EXTRA_PAIR_MODULES: tuple[str, ...] = ("test", "idlelib", "lib2to3", "turtledemo")


def iter_extra_files(root: Path | None = None) -> Iterator[SourceFile]:
    """The ``.py`` files of :data:`EXTRA_PAIR_MODULES`, sorted; a file whose path names a
    held-out module (``test/test_json/...``, ``test/test_zipfile64.py``) is skipped, so tests
    of the held-out modules (which quote their code and docstrings) are never trained on."""
    root = root or stdlib_dir()
    for module in EXTRA_PAIR_MODULES:
        for path in sorted((root / module).rglob("*.py")):
            relpath = path.relative_to(root).as_posix()
            if "__pycache__" in path.parts or any(h in relpath for h in HELDOUT_MODULES):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            yield SourceFile(module, path, relpath, text)


def is_heldout(module: str) -> bool:
    return module in HELDOUT_MODULES


def prose_documents() -> list[str]:
    """The language reference topics (``pydoc_data.topics``), one document per topic."""
    from pydoc_data.topics import topics

    return [topics[k].strip() + "\n" for k in sorted(topics) if topics[k].strip()]


# -- signature -> docstring pairs ------------------------------------------------------
def extract_pairs(source: SourceFile) -> list[Pair]:
    """Pairs of one file: every def/class whose body starts with a docstring on its own line."""
    try:
        tree = ast.parse(source.text)
    except SyntaxError:
        return []
    lines = source.text.splitlines(keepends=True)
    pairs: list[Pair] = []

    def visit(node: ast.AST, classes: list[ast.ClassDef], qual: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{qual}.{child.name}" if qual else child.name
                pair = _pair(source, lines, child, classes, name)
                if pair is not None:
                    pairs.append(pair)
                inner = classes + [child] if isinstance(child, ast.ClassDef) else []
                if isinstance(child, ast.ClassDef):
                    visit(child, inner, name)
                # functions nested in functions are skipped: their context is the outer body

    visit(tree, [], "")
    return pairs


def _header_lines(lines: list[str], node: ast.AST, *, with_decorators: bool) -> list[str]:
    """Source lines from the first decorator (or the def/class line) to just before the body."""
    first = node.lineno
    if with_decorators and node.decorator_list:
        first = min(d.lineno for d in node.decorator_list)
    return lines[first - 1:node.body[0].lineno - 1]


def _pair(source: SourceFile, lines: list[str], node: ast.AST, classes: list[ast.ClassDef],
          qualname: str) -> Pair | None:
    body = node.body
    if not body or not isinstance(body[0], ast.Expr):
        return None
    doc = body[0].value
    if not (isinstance(doc, ast.Constant) and isinstance(doc.value, str)):
        return None
    header = _header_lines(lines, node, with_decorators=True)
    if not header or doc.lineno <= node.lineno or any(not ln.endswith("\n") for ln in header):
        return None                               # docstring on the def line, or odd layout
    if len(inspect_clean(doc.value)) < MIN_DOC_CHARS:
        return None
    prefix: list[str] = []
    if classes:
        # the enclosing class header only (its own decorators and docstring left out)
        outer = classes[-1]
        prefix = [ln for ln in lines[outer.lineno - 1:_class_header_end(outer)]]
    doc_lines = lines[doc.lineno - 1:doc.end_lineno]
    response = "".join(doc_lines).rstrip("\n")
    if len(doc_lines) > MAX_DOC_LINES or len(response) > MAX_DOC_CHARS:
        response = "".join(doc_lines[:MAX_DOC_LINES]).rstrip("\n")[:MAX_DOC_CHARS]
        response = response[:response.rfind("\n")] if "\n" in response else response
    prompt = "".join(prefix + header)
    if not prompt.strip() or not response.strip() or "\r" in prompt + response:
        return None
    kind = ("class" if isinstance(node, ast.ClassDef)
            else "method" if classes else "function")
    return Pair(id=f"{source.relpath}:{qualname}", module=source.module, prompt=prompt,
                response=response, kind=kind, indent=doc.col_offset)


def _class_header_end(cls: ast.ClassDef) -> int:
    """Line number (1-based, inclusive) of the last line of a class's ``class ...:`` header."""
    return cls.body[0].lineno - 1 if cls.body[0].lineno > cls.lineno else cls.lineno


def inspect_clean(doc: str) -> str:
    import inspect

    return inspect.cleandoc(doc)


# -- documents for training and evaluation ----------------------------------------------
def line_chunks(text: str, count_tokens, max_tokens: int) -> list[str]:
    """Cut ``text`` at line boundaries into pieces of at most ``max_tokens`` tokens.

    ``count_tokens(list_of_lines) -> list_of_counts``; a single line longer than the limit
    is cut by characters. Pieces concatenate back to ``text``.
    """
    lines = text.splitlines(keepends=True)
    if not lines:
        return []
    counts = count_tokens(lines)
    chunks: list[str] = []
    current: list[str] = []
    used = 0
    for line, n in zip(lines, counts):
        if n > max_tokens:                         # a very long line: cut it by characters
            if current:
                chunks.append("".join(current))
                current, used = [], 0
            step = max(1, len(line) * max_tokens // (2 * n))
            chunks += [line[i:i + step] for i in range(0, len(line), step)]
            continue
        if used + n > max_tokens and current:
            chunks.append("".join(current))
            current, used = [], 0
        current.append(line)
        used += n
    if current:
        chunks.append("".join(current))
    return [c for c in chunks if c.strip()]
