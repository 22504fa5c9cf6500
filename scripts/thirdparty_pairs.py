"""Held-out third-party pairs: signature -> docstring pairs of installed packages that the
default model is never trained on, and the default model's matching on both held-out sets.

    python scripts/thirdparty_pairs.py extract   # data/default_model/heldout_thirdparty_pairs.jsonl
    python scripts/thirdparty_pairs.py measure   # matching of the shipped model, both sets (JSON)

The pairs are extracted exactly as the stdlib's (``stdlib_corpus.extract_pairs``: prompt =
decorators, the enclosing class's header for methods and the ``def``/``class`` lines;
response = the docstring literal as written), from the ``.py`` files of each package in
:data:`PACKAGES` as installed, and :data:`PER_PACKAGE` of them per package are kept (a
seeded sample, so no package dominates). The stdlib corpus never reads ``site-packages``,
so these packages are not in the default model's training data; ``build_default_model.py``
also drops any train pair that equals one of them (:func:`excluded`).

The matching figure is ``default_model_eval.matching`` with its seed: log Pr(docstring |
its own signature) > log Pr(docstring | another pair's signature whose docstring has the
same indentation), over all pairs of a set.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import default_model_eval as ev  # noqa: E402
import stdlib_corpus as corpus  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "data" / "default_model" / "heldout_thirdparty_pairs.jsonl"
STDLIB_PAIRS = ROOT / "data" / "default_model" / "heldout_pairs.jsonl"

#: import name -> distribution name. Four styles: an HTTP client (requests), a CLI toolkit
#: (click), a template engine (jinja2), iterator recipes (more_itertools); pure Python,
#: docstring-rich, none of them in the standard library.
PACKAGES: dict[str, str] = {"requests": "requests", "click": "click", "jinja2": "Jinja2",
                            "more_itertools": "more-itertools"}
PER_PACKAGE = 100
SEED = 0


def package_files(name: str) -> list[corpus.SourceFile]:
    """The installed package's ``.py`` files, ids relative to its parent folder."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{name} is not installed as a package; pip install "
                         f"{PACKAGES[name]} (the held-out set names its version)")
    root = Path(next(iter(spec.submodule_search_locations)))
    files = []
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        files.append(corpus.SourceFile(name, path, path.relative_to(root.parent).as_posix(),
                                       path.read_text(encoding="utf-8")))
    return files


def versions() -> dict[str, str]:
    return {name: importlib.metadata.version(dist) for name, dist in PACKAGES.items()}


def extract() -> list[dict]:
    """:data:`PER_PACKAGE` pairs per package (seeded sample, file order kept)."""
    rows: list[dict] = []
    found = versions()
    for name in PACKAGES:
        pairs = [p for f in package_files(name) for p in corpus.extract_pairs(f)]
        keep = sorted(random.Random(f"{SEED}:{name}").sample(range(len(pairs)),
                                                            min(PER_PACKAGE, len(pairs))))
        rows += [{**pairs[i].record(), "version": found[name]} for i in keep]
    return rows


def excluded(pairs: list) -> tuple[list, int]:
    """``pairs`` (stdlib_corpus.Pair) without any equal to a third-party pair; and how many
    were dropped (0 for the stdlib corpus, which never reads site-packages)."""
    if not PAIRS.exists():
        return pairs, 0
    held = {(r["prompt"], r["response"]) for r in _read(PAIRS)}
    kept = [p for p in pairs if (p.prompt, p.response) not in held]
    return kept, len(pairs) - len(kept)


def measure(model: str | None = None, threads: int = 1, *, same_package_pass: bool = True
            ) -> dict:
    """Matching of ``model`` (default: the shipped default model) on both held-out sets
    (and the stricter same-package variant unless ``same_package_pass`` is False)."""
    import torch

    from loglik import Scorer

    torch.set_num_threads(threads)
    scorer = Scorer.from_pretrained(model) if model else Scorer.from_pretrained()
    out: dict = {"model": model or "default", "packages": versions()}
    for name, path in (("stdlib", STDLIB_PAIRS), ("thirdparty", PAIRS)):
        m = ev.matching(scorer, _read(path), seed=SEED)
        m.pop("wins")
        out[name] = m
    if same_package_pass:
        out["thirdparty_same_package"] = same_package(scorer, _read(PAIRS), seed=SEED)
    return out


def same_package(scorer, rows: list[dict], *, seed: int = SEED) -> dict:
    """Stricter matching: the other signature comes from the same package (its style, its
    vocabulary), same indentation as before."""
    wins = [w for name in PACKAGES for w in ev.matching(
        scorer, [r for r in rows if r["module"] == name], seed=seed)["wins"]]
    return {"pairs": len(wins), "rate": sum(wins) / len(wins)}


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("extract", "measure"))
    p.add_argument("--model", default=None, help="measure: a model folder (default: loglik's)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.command == "extract":
        rows = extract()
        PAIRS.parent.mkdir(parents=True, exist_ok=True)
        PAIRS.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                         encoding="utf-8")
        print(f"{len(rows)} pairs from {versions()} -> {PAIRS}")
    else:
        print(json.dumps(measure(args.model, args.threads), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
