"""``loglik`` command line: one module per command, each a thin layer over one Python call.

A command module has ``add_parser(subparsers)`` and ``run(args) -> int``; importing it must be
cheap (torch and transformers are imported inside ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ..errors import LoglikError

# name -> module; a command whose module is absent is simply not offered.
COMMANDS = ("score", "explain", "audit", "compare", "choose", "train", "eval", "compare_runs")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="loglik", description="Exact conditional log-likelihood log Pr(response | prompt) "
        "under a causal language model.")
    parser.add_argument("--version", action="version", version=f"loglik {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="loglik: %(message)s")
    if not args.verbose:
        _quiet_transformers()
    try:
        return int(args.run(args) or 0)
    except LoglikError as exc:
        print(f"loglik: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loglik: interrupted; finished records are in the output, rerun with --resume "
              "to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _quiet_transformers() -> None:
    import os
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", module="transformers")
    try:   # the "Loading weights" bar and load reports would break the one-line contract
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
