"""``loglik explain PROMPT RESPONSE``: every term of log Pr(response | prompt), one row each."""

from __future__ import annotations

import argparse
import json

from .common import add_encode_options, add_model_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="per-token table of one pair's log-probability",
                       description="Show each response token with its log-prob, probability, "
                       "running sum (the last row is log Pr(response | prompt)), rank, entropy "
                       "and the most probable alternatives.")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("response", metavar="RESPONSE")
    p.add_argument("--top-k", type=int, default=5, help="alternatives per token (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report to FILE")
    p.add_argument("--color-by", choices=("logprob", "rank"), default="logprob",
                   help="what colours the tokens of the HTML report (default logprob)")
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .common import scorer_from_args

    scorer = scorer_from_args(args)
    expl = scorer.explain(args.prompt, args.response, top_k=args.top_k)
    if args.html:
        from ..render.html import explain_report, write

        write(args.html, explain_report([expl], title="loglik explain", color_by=args.color_by,
                                        model=args.model or "the embedded model"))
    if args.json:
        print(json.dumps(expl.to_dict(), ensure_ascii=False))
        return 0
    from rich.console import Console

    console = Console()
    console.print(expl.table())
    if args.html:
        console.print(f"report written to {args.html}", highlight=False)
    return 0
