"""``loglik explain PROMPT RESPONSE``: every term of log Pr(response | prompt), one row each.

Argument parsing only: the work is :func:`loglik.reports.run_explain`.
"""

from __future__ import annotations

import argparse

from .common import add_encode_options, add_model_options, add_view_options, scorer_kwargs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="per-token table of one pair's log-probability",
                       description="Show each response token with its log-prob, probability, "
                       "running sum (the last row is log Pr(response | prompt)), rank, entropy "
                       "and the most probable alternatives.")
    p.add_argument("prompt", metavar="PROMPT")
    p.add_argument("response", metavar="RESPONSE")
    p.add_argument("--top-k", type=int, default=5, help="alternatives per token (default 5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    add_view_options(p)
    p.add_argument("--html", default=None, metavar="FILE",
                   help="also write a self-contained HTML report to FILE")
    p.add_argument("--color-by", choices=("logprob", "rank"), default="logprob",
                   help="what colours the tokens of the HTML report (default logprob)")
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..reports import run_explain

    run_explain(args.prompt, args.response, model=args.model, load=scorer_kwargs(args),
                top_k=args.top_k, html=args.html, color_by=args.color_by, as_json=args.json,
                wide=args.wide)
    return 0
