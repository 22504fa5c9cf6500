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

COMMANDS = ("score", "explain", "audit", "compare", "choose", "train", "serve", "eval",
            "compare_runs")

# Help for the positional arguments every command shares, in one place.
POSITIONAL_HELP = {
    "DATA": "input records: a JSONL, CSV or Parquet file, a folder or glob of them, or '-' "
            "(JSONL on stdin)",
    "PROMPT": "the prompt (context) text",
    "RESPONSE": "the response text whose log-probability is computed",
}


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already says it (or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if ("default" in text or "%(default)" in text or default in (None, False, "")
                or default is argparse.SUPPRESS or not action.option_strings):
            return text
        return text + " (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="loglik", description="Exact conditional log-likelihood log Pr(response | prompt) "
        "under a causal language model.", formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"loglik {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parser(sub)
        command = sub.choices[name.replace("_", "-")]   # module compare_runs: compare-runs
        command.formatter_class = HelpFormatter
        # -v after the command too; SUPPRESS keeps a -v given before it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="log what happens")
        for action in command._actions:
            if not action.option_strings and action.help is None:
                action.help = POSITIONAL_HELP.get(str(action.metavar))
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
    except KeyboardInterrupt as exc:   # the library's message says what the output holds
        print(f"loglik: {exc or 'interrupted'}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _quiet_transformers() -> None:
    import os
    import warnings

    # transformers reads these when it is imported (only once a command loads a model: its
    # import costs seconds); the "Loading weights" bar and load reports would break the
    # one-line contract.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", module="transformers")
    if "transformers" in sys.modules:       # already imported (main called from Python)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
