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
    p.add_argument("prompt", metavar="PROMPT", nargs="?", default=None)
    p.add_argument("response", metavar="RESPONSE", nargs="?", default=None)
    p.add_argument("--messages", default=None, metavar="JSON_OR_FILE",
                   help="explain a conversation instead of PROMPT RESPONSE: OpenAI messages "
                   "as JSON text, or a .json file holding them (or a record with "
                   "'messages'); its scored assistant turn is explained, end-of-turn tokens "
                   "included (see --turns, --no-end-of-turn, --chat-template)")
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
    from ..reports import read_messages_arg, run_explain

    if (args.messages is None) == (args.prompt is None or args.response is None) \
            or (args.messages is not None and args.prompt is not None):
        from ..errors import ConfigError

        raise ConfigError("explain takes PROMPT RESPONSE, or --messages JSON_OR_FILE (a "
                          "conversation); give one of the two")
    messages = read_messages_arg(args.messages) if args.messages is not None else None
    run_explain(args.prompt, args.response, messages=messages, model=args.model, load=scorer_kwargs(args),
                top_k=args.top_k, html=args.html, color_by=args.color_by, as_json=args.json,
                wide=args.wide)
    return 0
