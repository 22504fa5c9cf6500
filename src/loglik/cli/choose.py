"""``loglik choose DATA``: multiple choice, the pick under each rule, accuracies with gold.

Reads rows with a context (or a conversation's ``messages``), a list of choices and optionally the gold index (JSONL or
Parquet). ``-o FILE`` writes one JSON line per row (choice log-probs, counts, picks,
correctness); the terminal gets the accuracy table (``--json``: one JSON object with the
accuracies and, without ``-o``, the rows).
"""

from __future__ import annotations

import argparse
import json

from .common import add_encode_options, add_model_options, add_view_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("choose", help="multiple choice: pick a choice under each rule",
                       description="Score every choice of every row of DATA as a response to "
                       "its context; pick under sum, per_token, per_byte, per_char and "
                       "mutual_info; with gold labels, report accuracies and standard errors.")
    p.add_argument("data", metavar="DATA")
    p.add_argument("-o", "--output", default=None,
                   help="per-row JSONL output ('-': stdout)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    add_view_options(p, progress=True)
    p.add_argument("--mutual-info", action=argparse.BooleanOptionalAction, default=True,
                   help="also score each choice after --neutral-prompt (default on)")
    p.add_argument("--neutral-prompt", default="",
                   help="context-free prompt of the mutual_info rule (default: empty, i.e. BOS)")
    p.add_argument("--context-field", default="context", help="field holding the context")
    p.add_argument("--choices-field", default="choices", help="field holding the choice list")
    p.add_argument("--gold-field", default="gold",
                   help="field holding the gold index (or the gold choice's text)")
    p.add_argument("--id-field", default="id", help="field carried through as the row id")
    p.add_argument("--messages-field", default="messages",
                   help="field holding a conversation's history (OpenAI messages) instead of a "
                   "context: each choice is a candidate final assistant message")
    p.add_argument("--format", choices=("jsonl", "parquet"), default=None,
                   help="input format (default: from the file name; '-' is JSONL)")
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..choices import ChoiceFields, choose_file
    from ..render.terminal import print_choices
    from .common import scorer_kwargs

    results = choose_file(args.data, args.output,
                          fields=ChoiceFields(context=args.context_field,
                                              choices=args.choices_field,
                                              gold=args.gold_field, id=args.id_field,
                                              messages=args.messages_field),
                          format=args.format, mutual_info=args.mutual_info,
                          neutral_prompt=args.neutral_prompt, scorer=args.model,
                          scorer_options=scorer_kwargs(args), progress=args.progress)
    if args.output == "-":
        return 0
    if args.json:
        out = results.to_dict() if args.output is None else results.summary.to_dict()
        print(json.dumps(out, ensure_ascii=False))
    else:
        print_choices([{"name": args.model or "default model", **results.summary.to_dict()}],
                      wide=args.wide or None)
    return 0

