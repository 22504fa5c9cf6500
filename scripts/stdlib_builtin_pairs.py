"""Signature -> docstring pairs of the standard library's C-implemented parts (the widen
stage of the default model's retrain).

The source corpus (scripts/stdlib_corpus.py) reads ``.py`` files, so the functions, types and
methods written in C -- ``builtins``, ``math``, ``itertools``, ``_io``, ``_socket``, ... --
never give it a pair, though their docstrings are stdlib prose like the rest. Here they are
taken by introspection and written in the source pairs' layout, as if the object were
written in Python::

    prompt   "class str:\\n    def split(self, /, sep=None, maxsplit=-1):\\n"
    response '        \"\"\"Return a list of the substrings in the string, ...\"\"\"'

The signature is ``inspect.signature``'s (Argument Clinic's ``__text_signature__``); an
object without one gets ``(*args, **kwargs)``. The C accelerators of held-out modules
(``_bisect``, ``_heapq``, ``_json``, ``_csv``, ``_statistics``: their docstrings are the
held-out modules' own) are skipped, and so is every docstring equal, once cleaned, to a
held-out pair's.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import sysconfig
import warnings
from collections.abc import Iterable, Iterator

from stdlib_corpus import HELDOUT_MODULES, MAX_DOC_CHARS, MAX_DOC_LINES, MIN_DOC_CHARS, Pair


def c_modules() -> list[str]:
    """Names of the built-in and ``lib-dynload`` extension modules, sorted, without the
    accelerators of held-out modules (``_json`` for ``json``) and private test helpers."""
    names = set(sys.builtin_module_names)
    dyn = os.path.join(sysconfig.get_paths()["platstdlib"], "lib-dynload")
    if os.path.isdir(dyn):
        names |= {f.split(".")[0] for f in os.listdir(dyn) if f.endswith(".so")}
    return sorted(n for n in names if n.lstrip("_") not in HELDOUT_MODULES
                  and not n.startswith(("_test", "_xx", "xx", "_ctypes_test")))


def _is_c(obj: object) -> bool:
    return callable(obj) and not hasattr(obj, "__code__") and not isinstance(obj, property)


def _signature(obj: object, *, method: bool) -> str:
    try:
        sig = str(inspect.signature(obj))
    except Exception:          # no signature, or one whose defaults do not evaluate here
        return "(self, *args, **kwargs)" if method else "(*args, **kwargs)"
    if method and not sig.startswith("(self"):                 # unbound C methods keep self
        sig = "(self" + (", " + sig[1:] if sig != "()" else ")")
    return sig


def _literal(doc: str, indent: int) -> str | None:
    """The docstring as a source literal at ``indent`` columns (cut like the source pairs), or
    None where it cannot be one as written (triple quotes, a backslash or a control character
    inside, too short)."""
    text = inspect.cleandoc(doc)
    if len(text) < MIN_DOC_CHARS or '"""' in text or "\\" in text or text.endswith('"') \
            or any(ord(c) < 32 and c not in "\n\t" for c in text):
        return None
    pad = " " * indent
    lines = text.split("\n")
    cut = len(lines) > MAX_DOC_LINES or len(text) > MAX_DOC_CHARS
    if cut:
        lines = lines[:MAX_DOC_LINES]
    body = [pad + '"""' + lines[0]] + [(pad + ln) if ln.strip() else "" for ln in lines[1:]]
    out = "\n".join(body)
    if cut:                                   # a prefix, closing quotes kept off
        out = out[:MAX_DOC_CHARS]
        return out[:out.rfind("\n")] if "\n" in out else out
    return out + ("\n" + pad + '"""' if len(lines) > 1 else '"""')


def _members(module: str, mod: object) -> Iterator[tuple[str, str, str, str]]:
    """(qualname, kind, prompt, docstring) of the module's C functions, types and methods."""
    for name, obj in sorted(vars(mod).items()):
        if name.startswith("__") or getattr(obj, "__module__", module) not in (module, None):
            continue
        if isinstance(obj, type):
            header = f"class {name}:\n"
            if isinstance(obj.__doc__, str):
                yield name, "class", header, obj.__doc__
            for attr, member in sorted(vars(obj).items()):
                if (attr.startswith("__") and attr != "__init__") or not _is_c(member):
                    continue
                doc = getattr(member, "__doc__", None)
                if isinstance(doc, str):
                    sig = _signature(member, method=True)
                    yield (f"{name}.{attr}", "method",
                           f"{header}    def {attr}{sig}:\n", doc)
        elif _is_c(obj) and isinstance(getattr(obj, "__doc__", None), str):
            yield name, "function", f"def {name}{_signature(obj, method=False)}:\n", obj.__doc__


def builtin_pairs(exclude_docs: Iterable[str] = ()) -> list[Pair]:
    """Pairs of every C module of :func:`c_modules` (each docstring once, first module in
    sorted order wins), leaving out docstrings in ``exclude_docs`` (compared cleaned)."""
    seen = {inspect.cleandoc(d) for d in exclude_docs}
    pairs: list[Pair] = []
    for module in c_modules():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                mod = importlib.import_module(module)
        except Exception:                     # a module this build lacks a library for
            continue
        for qual, kind, prompt, doc in _members(module, mod):
            indent = 8 if kind == "method" else 4
            clean = inspect.cleandoc(doc) if isinstance(doc, str) else ""
            literal = _literal(doc, indent) if clean and clean not in seen else None
            if literal is None:
                continue
            seen.add(clean)
            pairs.append(Pair(id=f"<{module}>:{qual}", module=module, prompt=prompt,
                              response=literal, kind=kind, indent=indent))
    return pairs


def cleaned_docstring(response: str) -> str:
    """A source pair's docstring text, cleaned (quotes, prefix letters and indentation off),
    to compare with an introspected ``__doc__``."""
    text = response.strip()
    for q in ('"""', "'''", '"', "'"):
        i = text.find(q)
        if i != -1 and i <= 2:
            text = text[i + len(q):]
            if text.endswith(q):
                text = text[:-len(q)]
            break
    return inspect.cleandoc(text)
