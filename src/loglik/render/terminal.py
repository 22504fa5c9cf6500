"""Terminal views: rich tables that fit the console's width and never cut a number.

A table is laid out by :func:`fit_table` from its columns and string cells:

* numbers (``kind="num"``) keep their full width, right-aligned, never wrapped or cut;
* text (``kind="text"``: model names, ids, prompts, responses, tokens) is cut with ``…`` to
  what is left, down to ``min_width``;
* lists (``kind="list"``: ``explain``'s alternatives) show as many whole items as fit on one
  line;
* when even that does not fit, optional columns are left out in the table's ``drop`` order and
  a line under it names them (``--wide`` shows every column, ``--json`` has every figure).

``wide=True`` keeps every column at its natural width (the console widens to the table; a
terminal then wraps the lines, the numbers stay whole). Output that is not a terminal (a file,
a pipe) gets the wide layout: nothing is hidden from a log.

Views: :func:`comparison_tables` (``loglik compare``), :func:`choice_tables` (``compare
--choices``, ``choose``) and :func:`explanation_table` (``loglik explain``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

Kind = Literal["num", "text", "list"]
WIDE_HINT = "--wide shows them, --json has every figure"


@dataclass(frozen=True)
class Col:
    """One column: its header, what its cells hold (numbers are right-aligned, text and
    lists left) and how narrow text may get."""

    name: str
    kind: Kind = "num"
    min_width: int = 8          # text and lists only: the narrowest they are cut to


@dataclass
class Fitted:
    """A table laid out for a width: the table, its width, the columns left out."""

    table: Table
    width: int
    left_out: list[str] = field(default_factory=list)

    def note(self) -> str | None:
        """The line that says which columns a narrow console left out, or None."""
        if not self.left_out:
            return None
        return f"left out at this width: {', '.join(self.left_out)} ({WIDE_HINT})"


def _natural(col: Col, cells: Sequence[Any]) -> int:
    if col.kind == "list":
        widths = [cell_len("  ".join(c)) for c in cells]
    else:
        widths = [cell_len(c) for c in cells]
    return max([cell_len(col.name), *widths])


def _narrowest(col: Col, cells: Sequence[Any], natural: int) -> int:
    """Numbers: their widest cell (the header may wrap); text and lists: ``min_width``."""
    header = max((cell_len(w) for w in col.name.split()), default=1)
    if col.kind == "num":
        return max([header, *(cell_len(c) for c in cells)])
    return min(natural, max(col.min_width, header))


def _pack(items: Sequence[str], width: int) -> str:
    """As many whole items as fit in ``width`` cells, two spaces apart."""
    out, used = [], 0
    for item in items:
        need = cell_len(item) + (2 if out else 0)
        if used + need > width:
            break
        out.append(item)
        used += need
    return "  ".join(out)


def fit_table(columns: Sequence[Col], rows: Sequence[Sequence[Any]], *, width: int,
              wide: bool = False, drop: Sequence[str] = (), title: str | None = None,
              caption: str | None = None) -> Fitted:
    """Lay out a table in at most ``width`` cells (see the module docstring).

    Args:
        columns: the columns, in display order.
        rows: one sequence of cells per row: strings (a list of strings for ``kind="list"``).
        width: the console's width.
        wide: every column at its natural width, whatever ``width`` says.
        drop: names of optional columns, the first left out first.
    """
    keep = list(range(len(columns)))
    natural = [_natural(c, [r[i] for r in rows]) for i, c in enumerate(columns)]
    narrowest = [_narrowest(c, [r[i] for r in rows], natural[i]) for i, c in enumerate(columns)]

    def least(idx: list[int]) -> int:           # narrowest layout of these columns
        inner = sum(narrowest[i] for i in idx)
        return inner + 3 * len(idx) + 1          # padding 1 + 1, borders

    left_out: list[str] = []
    if not wide:
        for name in drop:
            if least(keep) <= width:
                break
            present = [i for i in keep if columns[i].name == name]
            if present:                          # (a view may lack an optional column)
                keep.remove(present[0])
                left_out.append(name)
    widths = {i: natural[i] for i in keep}
    edges = 3 * len(keep) + 1                    # padding 1 + 1 per column, borders
    if not wide and sum(widths.values()) + edges > width:
        for i in keep:                           # first let number headers wrap,
            if columns[i].kind == "num":
                widths[i] = narrowest[i]
    if not wide and sum(widths.values()) + edges > width:
        flexible = [i for i in keep if columns[i].kind != "num"]
        for i in flexible:                       # then cut text: each to its narrowest,
            widths[i] = narrowest[i]
        room = width - sum(widths.values()) - edges
        for n, i in enumerate(sorted(flexible, key=lambda i: natural[i])):
            give = max(0, min(natural[i] - widths[i], room // (len(flexible) - n)))
            widths[i] += give                    # and share what is left, short ones first
            room -= give
    total = sum(widths.values()) + edges
    table = Table(title=title, caption=caption)
    for i in keep:
        c = columns[i]
        table.add_column(c.name, width=widths[i], no_wrap=c.kind != "num" or None,
                         justify="right" if c.kind == "num" else "left",
                         overflow="ellipsis" if c.kind != "num" else "fold")
    for r in rows:
        cells = []
        for i in keep:
            cell = r[i]
            if columns[i].kind == "list":
                cell = _pack(cell, widths[i])
            cells.append(Text(cell, no_wrap=True, overflow="ellipsis")
                         if columns[i].kind != "num" else Text(cell))
        table.add_row(*cells)
    return Fitted(table, total, left_out)


def print_fitted(console: Console, fitted: Fitted) -> None:
    """Print a fitted table (widening the console to it for a wide layout) and its note."""
    width = console.width
    if fitted.width > width:
        console.width = fitted.width
    try:
        console.print(fitted.table)
    finally:
        console.width = width
    note = fitted.note()
    if note:
        console.print(note, style="dim", highlight=False)


# -- numbers -----------------------------------------------------------------------------------
def num(x: float | None, digits: int = 3, sign: bool = False) -> str:
    """``x`` with ``digits`` decimals (``+`` for positive ones with ``sign``); n/a for None/nan."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


# -- loglik compare ----------------------------------------------------------------------------
def comparison_tables(c: Any, *, width: int, wide: bool = False) -> list[Fitted | str]:
    """The tables of a :class:`~loglik.comparison.Comparison`, each fitted to ``width``.

    Every difference is a − b, as ``diff_total`` in ``--json``; the titles say so.
    """
    out: list[Fitted | str] = []
    groups = {m.tokenizer_group for m in c.models}
    note = ("" if len(groups) == 1 else
            "\ntokenizers differ (group in brackets): compare totals and per byte; per token "
            "and perplexity only within a group")
    detail = c.models[0].mean_entropy is not None
    cols = [Col("model", "text", 8), Col("Σ logprob"), Col("mean/example"), Col("tokens"),
            Col("/token"), Col("perplexity"), Col("/byte"), Col("bits/byte"), Col("top-1")]
    cols += [Col("entropy"), Col("median rank")] if detail else []
    rows = []
    for m in c.models:
        s = m.stats
        name = m.name if len(groups) == 1 else f"{m.name} [{m.tokenizer_group}]"
        row = [name, num(s.total_logprob, 2), num(s.logprob_mean), str(s.num_tokens),
               num(s.logprob_per_token), num(s.perplexity, 2), num(s.logprob_per_byte),
               num(s.bits_per_byte), f"{m.top1_rate:.1%}"]
        if detail:
            row += [num(m.mean_entropy), num(m.median_rank, 1)]
        rows.append(row)
    out.append(fit_table(
        cols, rows, width=width, wide=wide, title=f"log Pr(response | prompt) over "
        f"{c.models[0].stats.num_examples} examples (nats){note}",
        drop=("median rank", "entropy", "/byte", "mean/example", "top-1", "tokens",
              "perplexity", "/token")))
    if not c.pairs:
        out.append("one model: nothing to compare it with (pass --model, twice to leave the "
                   "default model out)")
        return out

    cols = [Col("a − b", "text", 10), Col("compared on", "text", 6), Col("Δ total"),
            Col(f"{c.pairs[0].confidence:.0%} CI"), Col("Δ mean"), Col("Δ /byte"),
            Col("wins a / b / tie")]
    rows = [[f"{p.a} − {p.b}", "same tokens" if p.basis == "tokens" else "same text",
             num(p.diff_total, 2, True), f"[{p.ci_low:+.2f}, {p.ci_high:+.2f}]",
             num(p.diff_mean, 3, True), num(p.diff_per_byte, 4, True),
             f"{p.win_rate_a:.1%} / {p.win_rate_b:.1%} / {p.tie_rate:.1%}"] for p in c.pairs]
    out.append(fit_table(
        cols, rows, width=width, wide=wide, title="paired differences Δ = a − b in nats "
        "(positive: a makes the responses more probable)",
        drop=("compared on", "Δ /byte", "Δ mean", "wins a / b / tie")))

    with_tokens = [p for p in c.pairs if p.token_stats and p.token_stats.get("num_tokens")]
    if with_tokens:
        cols = [Col("a − b", "text", 10)] + [Col(n) for n in (
            "tokens", "KL mean", "KL p50", "KL p90", "KL p99", "KL max", "same top-1",
            "Δp mean", "Δp rms")]
        rows = []
        for p in with_tokens:
            s = p.token_stats
            rows.append([f"{p.a} − {p.b}", str(s["num_tokens"]), num(s["kl_mean"], 4),
                         num(s["kl_p50"], 4), num(s["kl_p90"], 4), num(s["kl_p99"], 4),
                         num(s["kl_max"], 4), f"{s['same_top1_rate']:.1%}",
                         num(s["true_prob_diff_mean"], 4, True),
                         num(s["true_prob_diff_rms"], 4)])
        out.append(fit_table(
            cols, rows, width=width, wide=wide, title="next-token distributions, same "
            "tokenizer: KL(a ‖ b) in nats per token, Δp = p_a(true) − p_b(true)",
            drop=("Δp rms", "KL p50", "KL p99", "KL max", "tokens", "Δp mean", "KL p90")))

    for p in c.pairs:
        if not p.largest:
            continue
        cols = [Col("#"), Col("id", "text", 4), Col("prompt", "text", 8),
                Col("response", "text", 8), Col("a"), Col("b"), Col("a − b")]
        rows = [[str(e["index"]), "" if e["id"] is None else str(e["id"]),
                 repr(e["prompt"][-60:]), repr(e["response"][:60]), num(e["logprob_a"], 2),
                 num(e["logprob_b"], 2), num(e["diff"], 2, True)] for e in p.largest]
        out.append(fit_table(
            cols, rows, width=width, wide=wide, title=f"largest differences (nats), "
            f"a = {p.a}, b = {p.b}", drop=("id", "#")))
    return out


def print_comparison(c: Any, console: Console | None = None, *, wide: bool | None = None
                     ) -> None:
    """Print :func:`comparison_tables` (``wide=None``: wide unless the console is a terminal)."""
    console = console or Console()
    wide = (not console.is_terminal) if wide is None else wide
    for item in comparison_tables(c, width=console.width, wide=wide):
        if isinstance(item, Fitted):
            print_fitted(console, item)
        else:
            console.print(item, highlight=False)


# -- multiple choice ---------------------------------------------------------------------------
def choice_tables(models: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]] = (), *,
                  confidence: float = 0.95, width: int, wide: bool = False) -> list[Fitted]:
    """Accuracy per rule and model (± standard error) and, for several models, the paired
    accuracy differences a − b with their bootstrap intervals."""
    rules = list(models[0]["rules"]) if models else []
    title = f"multiple choice: {models[0]['num_rows']} rows, {models[0]['num_gold']} with gold"
    cols = [Col("rule", "text", 8)] + [Col(m.get("name", "accuracy")) for m in models]
    rows = []
    for rule in rules:
        cells = [rule]
        for m in models:
            acc, se = m["rules"][rule]["accuracy"], m["rules"][rule]["stderr"]
            cells.append(f"{acc:.3f} ± {se:.3f}" if not math.isnan(se) else f"{acc:.3f}")
        rows.append(cells)
    out = [fit_table(cols, rows, width=width, wide=wide,
                     title=title if rules else title + " (no gold labels: no accuracies)")]
    for pair in pairs:
        rows = [[rule, num(d["acc_diff"], 3, True), f"[{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"]
                for rule, d in pair["rules"].items()]
        out.append(fit_table(
            [Col("rule", "text", 8), Col("Δ = a − b"), Col("CI")], rows, width=width, wide=wide,
            title=f"accuracy difference a − b, a = {pair['a']}, b = {pair['b']} "
            f"({confidence:.0%} bootstrap CI)"))
    return out


def print_choices(models: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]] = (), *,
                  confidence: float = 0.95, console: Console | None = None,
                  wide: bool | None = None) -> None:
    """Print :func:`choice_tables` (``wide=None``: wide unless the console is a terminal)."""
    console = console or Console()
    wide = (not console.is_terminal) if wide is None else wide
    for fitted in choice_tables(models, pairs, confidence=confidence, width=console.width,
                                wide=wide):
        print_fitted(console, fitted)


# -- loglik explain ----------------------------------------------------------------------------
def explanation_table(e: Any, *, width: int, wide: bool = False) -> Fitted:
    """One row per response token of an :class:`~loglik.explain.Explanation`.

    The alternatives show as many whole ``token p`` items as fit on one line; on a narrow
    console ``p``, then the entropy and the rank are left out before they get too few.
    """
    cols = [Col("pos"), Col("token", "text", 12), Col("log p"), Col("p"), Col("cumulative"),
            Col("rank"), Col("entropy"), Col("top alternatives", "list", 20)]
    rows = [[str(r.position), r.token, f"{r.logprob:.4f}", f"{r.prob:.3f}", f"{r.cumulative:.4f}",
             "" if r.rank is None else str(r.rank), "" if r.entropy is None else f"{r.entropy:.3f}",
             [f"{a.token} {a.prob:.2f}" for a in r.top]] for r in e.rows]
    return fit_table(cols, rows, width=width, wide=wide, drop=("p", "entropy", "rank"),
                     title=f"{len(e.rows)} response tokens (boundary: {e.boundary})",
                     caption=f"{_explained(e)} = {e.logprob:.4f} nats")


def _explained(e: Any) -> str:
    """What an explanation's total is the log-probability of."""
    if getattr(e, "messages", None) is not None:
        return "log Pr(assistant turn | conversation before it)"
    return "log Pr(response | prompt)"


def print_explanation(e: Any, console: Console | None = None, *, wide: bool | None = None
                      ) -> None:
    """Print :func:`explanation_table` (``wide=None``: wide unless the console is a terminal)."""
    console = console or Console()
    wide = (not console.is_terminal) if wide is None else wide
    print_fitted(console, explanation_table(e, width=console.width, wide=wide))
