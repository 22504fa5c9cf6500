"""``loglik compare DATA --model A --model B``: which model makes the responses more probable?

Prints per model the totals and normalisations, per pair the paired difference with a
bootstrap interval, win rates, the examples that differ most and (same tokenizer) token-level
KL / top-1 statistics; every difference is a − b. The tables fit the terminal (fewer
columns on a narrow one, all with ``--wide``). ``--json`` prints one JSON object instead;
``--plot FILE.png`` draws the difference distribution and one example's token traces. ``--choices`` reads
multiple-choice rows and compares accuracies instead. With one --model, it is compared with
the embedded default model; with none, the default model's own figures are printed.
Argument parsing only: the work is :func:`loglik.reports.run_compare`.
"""

from __future__ import annotations

import argparse

from .common import (add_data_options, add_encode_options, add_model_options, add_view_options,
                     fields_from_args, scorer_kwargs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare models on the same prompt/response pairs",
                       description="Score every record of DATA under every --model and compare: "
                       "totals, per token/byte/character, perplexity, bits per byte, paired "
                       "differences with bootstrap confidence intervals, win rates. With one --model it "
                       "is compared with the embedded default model; with none, that model's "
                       "own figures are printed.")
    p.add_argument("data", metavar="DATA", nargs="?", default=None)
    p.add_argument("--lm-eval-samples", nargs=2, default=None, metavar=("RUN_A", "RUN_B"),
                   help="instead of DATA and --model: compare two lm-eval --log_samples runs "
                   "(the same as 'loglik compare-runs RUN_A RUN_B')")
    p.add_argument("--name", action="append", default=None,
                   help="display name of each --model, in order (default: the model paths)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="level of the bootstrap intervals (default 0.95)")
    p.add_argument("--num-bootstrap", type=int, default=10_000,
                   help="bootstrap resamples of the examples (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")
    p.add_argument("--top", type=int, default=5,
                   help="examples with the largest differences to list per pair (default 5)")
    p.add_argument("--token-stats", action=argparse.BooleanOptionalAction, default=True,
                   help="KL divergence / same top-1 for models sharing a tokenizer (default on)")
    p.add_argument("--detail", action="store_true",
                   help="also compute each token's rank and entropy (mean entropy, median rank)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    add_view_options(p, progress=True)
    p.add_argument("--plot", default=None, metavar="FILE.png",
                   help="draw the difference distribution and one example's token traces")
    p.add_argument("--html", default=None, metavar="FILE",
                   help="write a self-contained HTML report: the responses under the first two "
                   "models side by side, with per-token differences")
    p.add_argument("--plot-pair", type=int, default=0, metavar="INDEX",
                   help="0-based pair (in table order) whose differences are drawn (default 0)")
    p.add_argument("--plot-example", type=int, default=None, metavar="INDEX",
                   help="0-based example drawn in the plot (default: largest difference)")
    p.add_argument("--choices", action="store_true",
                   help="DATA holds multiple-choice rows (context, choices, gold): compare "
                   "accuracies under each rule (see 'loglik choose')")
    p.add_argument("--context-field", default="context", help="with --choices: context field")
    p.add_argument("--choices-field", default="choices", help="with --choices: choices field")
    p.add_argument("--gold-field", default="gold", help="with --choices: gold index field")
    add_data_options(p)
    add_model_options(p, multiple=True)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lm_eval_samples:
        return _lm_eval_samples(args)
    if args.data is None:
        from ..errors import ConfigError

        raise ConfigError("loglik compare needs DATA (a file of prompt/response records), or "
                          "--lm-eval-samples RUN_A RUN_B for two lm-eval runs")
    from ..choices import ChoiceFields
    from ..reports import run_compare

    choices = (ChoiceFields(context=args.context_field, choices=args.choices_field,
                            gold=args.gold_field, id=args.id_field,
                            messages=args.messages_field) if args.choices else None)
    run_compare(args.model or [], args.data, names=args.name, fields=fields_from_args(args),
                fmt=args.format, load=scorer_kwargs(args), choices=choices,
                confidence=args.confidence, num_bootstrap=args.num_bootstrap, seed=args.seed,
                top=args.top, token_stats=args.token_stats, detail=args.detail, plot=args.plot,
                plot_pair=args.plot_pair, plot_example=args.plot_example, html=args.html,
                as_json=args.json, wide=args.wide, progress=args.progress)
    return 0


def _lm_eval_samples(args: argparse.Namespace) -> int:
    """``--lm-eval-samples RUN_A RUN_B``: ``loglik compare-runs`` under this command's name."""
    from ..errors import ConfigError
    from .compare_runs import run as compare_runs

    if args.data is not None or args.model:
        raise ConfigError("--lm-eval-samples compares two lm-eval runs already made: drop DATA "
                          "and --model (or run 'loglik compare DATA --model ...' without it)")
    args.run_a, args.run_b = args.lm_eval_samples
    args.tasks = None
    return compare_runs(args)
