"""``loglik audit [DATA]``: can this model's log-probs be trusted? PASS / FAIL per check."""

from __future__ import annotations

import argparse
import json

from .common import (add_data_options, add_encode_options, add_model_options,
                     add_progress_option, fields_from_args)

CHECKS = ("kv_cache", "invariance", "normalisation", "tokenizer")   # = loglik.audit.CHECKS
ENGINE_CHECKS = ("alignment", "agreement", "normalisation", "sampling", "batch_invariance",
                 "determinism")                                   # = loglik.audit.engine's


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("audit", help="check that a model's log-probs are consistent",
                       description="Check the model and tokenizer: full forward vs KV-cache "
                       "decoding, batch/padding/packing/shared-context invariance, normalisation, "
                       "tokenizer vs model; with --check FILE, diagnose another tool's log-probs. "
                       "Exits 1 when a check fails.")
    p.add_argument("data", metavar="DATA", nargs="?", default=None,
                   help="pairs to run the checks on (default: a built-in set)")
    p.add_argument("--check", default=None, metavar="FILE",
                   help="JSONL of prompt, response, token_logprobs and/or logprob from another "
                   "tool: recompute each record and diagnose the ones that disagree")
    p.add_argument("--checks", default=None,
                   help=f"comma-separated checks to run (default: {','.join(CHECKS)}; with "
                   f"--engine: {','.join(ENGINE_CHECKS)})")
    p.add_argument("--engine", default=None, metavar="URL",
                   help="audit a serving engine (an OpenAI-compatible server, e.g. "
                   "http://127.0.0.1:8000/v1) against --model, the reference weights")
    p.add_argument("--engine-dtype", default="float32",
                   help="--engine: the engine's dtype, for the default tolerance (1e-4 in "
                   "float32, 5e-2 in 16-bit)")
    p.add_argument("--engine-atol", type=float, default=None,
                   help="--engine: per-token tolerance in nats (default: from --engine-dtype)")
    p.add_argument("--max-examples", type=int, default=16,
                   help="examples used by the model checks (default 16)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="tolerance per token (nats) for --check records (default 1e-3)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    add_progress_option(p)
    add_data_options(p)
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..audit import audit
    from ..data import read_examples
    from ..progress import Progress
    from .common import scorer_from_args

    default = ENGINE_CHECKS if args.engine else CHECKS
    checks = [c.strip() for c in (args.checks or ",".join(default)).split(",") if c.strip()]
    fields = fields_from_args(args)
    examples = (read_examples(args.data, fields, args.format) if args.data is not None
                else None)
    scorer = scorer_from_args(args, transformers_model=True)
    if args.engine:
        from ..audit.engine import audit_engine

        report = audit_engine(args.engine, scorer, examples, model=args.served_model,
                              checks=checks, max_examples=args.max_examples,
                              atol=args.engine_atol, engine_dtype=args.engine_dtype,
                              timeout=args.timeout, fields=fields)
    else:
        total = len(checks) + (_count_lines(args.check) if args.check is not None else 0)
        with Progress("auditing", total=total, enabled=args.progress) as bar:
            report = audit(scorer, examples, check_file=args.check, checks=checks,
                           max_examples=args.max_examples, atol=args.atol, fields=fields,
                           progress=bar.advance)
    if args.json:
        print(json.dumps(report.to_dict(), ensure_ascii=False, default=str))
    else:
        report.print()
    return 0 if report.passed else 1


def _count_lines(path: str) -> int:
    """Non-blank lines of a --check file: its records, for the progress total."""
    try:
        with open(path, "rb") as handle:
            return sum(1 for line in handle if line.strip())
    except OSError:
        return 0          # the check itself reports the unreadable file
