"""``loglik compare DATA --model A --model B``: which model makes the responses more probable?

Prints per model the totals and normalisations, per pair the paired difference with a
bootstrap interval, win rates, the examples that differ most and (same tokenizer) token-level
KL / top-1 statistics. ``--json`` prints one JSON object instead; ``--plot FILE.png`` draws
the difference distribution and one example's token traces. ``--choices`` reads
multiple-choice rows and compares accuracies instead. With one --model, it is compared with
the embedded default model; with none, the default model's own figures are printed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from .common import add_data_options, add_encode_options, add_model_options, fields_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="compare models on the same prompt/response pairs",
                       description="Score every record of DATA under every --model and compare: "
                       "totals, per token/byte/character, perplexity, bits per byte, paired "
                       "differences with bootstrap confidence intervals, win rates. With one --model it "
                       "is compared with the embedded default model; with none, that model's "
                       "own figures are printed.")
    p.add_argument("data", metavar="DATA")
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


def model_names(models: list[str], names: list[str] | None) -> list[str]:
    """The given names, or the model paths shortened to what tells them apart."""
    from ..errors import ConfigError

    if names:
        if len(names) != len(models):
            raise ConfigError(f"got {len(names)} --name for {len(models)} --model; give one "
                              "name per model, in the same order")
        return names
    out = [os.path.basename(os.path.normpath(m)) or m for m in models]
    if len(set(out)) < len(out):
        out = list(models)
    if len(set(out)) < len(out):
        out = [f"{m}#{i + 1}" for i, m in enumerate(models)]
    return out


def run(args: argparse.Namespace) -> int:
    from .common import scorer_from_args

    models = args.model or []
    if len(models) < 2:
        # the embedded model takes the first place: alone, its own figures; beside one
        # --model, the comparison with it
        from ..default_model import default_model_path

        models = [default_model_path(), *models]
    if args.plot and len(models) < 2:
        from ..errors import ConfigError

        raise ConfigError("--plot draws the differences between two models; pass --model")
    names = model_names(models, args.name)
    scorers = {n: scorer_from_args(args, m) for n, m in zip(names, models)}
    if args.choices:
        return _run_choices(args, scorers)

    from ..comparison import compare
    from ..data import read_examples

    comparison = compare(scorers, read_examples(args.data, fields_from_args(args), args.format),
                         confidence=args.confidence, num_bootstrap=args.num_bootstrap,
                         seed=args.seed, top=args.top, token_stats=args.token_stats,
                         detail=args.detail)
    if args.plot:
        from ..render.plots import plot_comparison

        plot_comparison(comparison, args.plot, pair=args.plot_pair,
                        example=args.plot_example)
    if args.html:
        from ..render.html import comparison_report, write

        write(args.html, comparison_report(comparison))
    if args.json:
        print(json.dumps(comparison.to_dict(), ensure_ascii=False, default=str))
    else:
        print_comparison(comparison)
        if args.plot:
            print(f"plot written to {args.plot}")
    return 0


def _run_choices(args: argparse.Namespace, scorers: dict[str, Any]) -> int:
    from ..choices import ChoiceFields, compare_choices, read_choice_rows

    fields = ChoiceFields(context=args.context_field, choices=args.choices_field,
                          gold=args.gold_field, id=args.id_field)
    out = compare_choices(scorers, read_choice_rows(args.data, fields, args.format),
                          confidence=args.confidence, num_bootstrap=args.num_bootstrap,
                          seed=args.seed)
    out.pop("results")
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
        return 0
    from rich.console import Console
    from rich.table import Table

    from .choose import accuracy_table

    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, 100)   # files and pipes: no wrapping at 80
    console.print(accuracy_table(out["models"]))
    for pair in out["pairs"]:
        t = Table(title=f"{pair['a']} − {pair['b']}: accuracy difference "
                  f"({args.confidence:.0%} bootstrap CI)")
        t.add_column("rule")
        t.add_column("difference", justify="right")
        t.add_column("CI", justify="right")
        for rule, d in pair["rules"].items():
            t.add_row(rule, f"{d['acc_diff']:+.3f}", f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]")
        console.print(t)
    return 0


def _f(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_comparison(c: Any, file: Any = None) -> None:
    """The terminal tables of a :class:`~loglik.comparison.Comparison`."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=file or sys.stdout)
    if not console.is_terminal:
        console.width = max(console.width, 120)   # files and pipes: no wrapping at 80
    groups = {m.tokenizer_group for m in c.models}
    note = ("" if len(groups) == 1 else
            "\n[italic]tokenizers differ (group in brackets): compare totals and per byte; "
            "per token and perplexity only within a group[/italic]")
    t = Table(title=f"log Pr(response | prompt) over {c.models[0].stats.num_examples} examples "
              f"(nats){note}")
    cols = ["model", "Σ logprob", "mean/example", "tokens", "/token", "perplexity", "/byte",
            "bits/byte", "top-1"]
    detail = c.models[0].mean_entropy is not None
    cols += ["entropy", "median rank"] if detail else []
    for col in cols:
        t.add_column(col, justify="left" if col == "model" else "right")
    for m in c.models:
        s = m.stats
        name = m.name if len(groups) == 1 else f"{m.name} [{m.tokenizer_group}]"
        row = [name, _f(s.total_logprob, 2), _f(s.logprob_mean), str(s.num_tokens),
               _f(s.logprob_per_token), _f(s.perplexity, 2), _f(s.logprob_per_byte),
               _f(s.bits_per_byte), f"{m.top1_rate:.1%}"]
        if detail:
            row += [_f(m.mean_entropy), _f(m.median_rank, 1)]
        t.add_row(*row)
    console.print(t)
    if not c.pairs:
        console.print("one model: nothing to compare it with (pass --model, twice to leave "
                      "the default model out)")
        return

    t = Table(title="paired differences a − b (positive: a makes the responses more probable)")
    for col in ("a − b", "compared on", "Δ total", f"{c.pairs[0].confidence:.0%} CI", "Δ mean",
                "Δ /byte", "wins a / b / tie"):
        t.add_column(col, justify="left" if col in ("a − b", "compared on") else "right")
    for p in c.pairs:
        basis = "same tokens" if p.basis == "tokens" else "same text"
        t.add_row(f"{p.a} − {p.b}", basis, f"{p.diff_total:+.2f}",
                  f"[{p.ci_low:+.2f}, {p.ci_high:+.2f}]", f"{p.diff_mean:+.3f}",
                  f"{p.diff_per_byte:+.4f}",
                  f"{p.win_rate_a:.1%} / {p.win_rate_b:.1%} / {p.tie_rate:.1%}")
    console.print(t)

    with_tokens = [p for p in c.pairs if p.token_stats and p.token_stats.get("num_tokens")]
    if with_tokens:
        t = Table(title="next-token distributions, same tokenizer: KL(a ‖ b) in nats per token, "
                  "Δp = p_a(true) − p_b(true)")
        for col in ("a − b", "tokens", "KL mean", "KL p50", "KL p90", "KL p99", "KL max",
                    "same top-1", "Δp mean", "Δp rms"):
            t.add_column(col, justify="left" if col == "a − b" else "right")
        for p in with_tokens:
            s = p.token_stats
            t.add_row(f"{p.a} − {p.b}", str(s["num_tokens"]), _f(s["kl_mean"], 4), _f(s["kl_p50"], 4),
                      _f(s["kl_p90"], 4), _f(s["kl_p99"], 4), _f(s["kl_max"], 4),
                      f"{s['same_top1_rate']:.1%}", _f(s["true_prob_diff_mean"], 4),
                      _f(s["true_prob_diff_rms"], 4))
        console.print(t)

    for p in c.pairs:
        if not p.largest:
            continue
        t = Table(title=f"largest differences, {p.a} − {p.b}")
        for col in ("#", "id", "prompt", "response", p.a, p.b, "Δ"):
            t.add_column(col, justify="right" if col in ("#", p.a, p.b, "Δ") else "left",
                         overflow="ellipsis", max_width=30 if col in ("prompt", "response")
                         else None, no_wrap=True)
        for e in p.largest:
            t.add_row(str(e["index"]), "" if e["id"] is None else str(e["id"]),
                      repr(e["prompt"][-30:]), repr(e["response"][:30]), _f(e["logprob_a"], 2),
                      _f(e["logprob_b"], 2), f"{e['diff']:+.2f}")
        console.print(t)
