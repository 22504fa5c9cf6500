"""``loglik score`` on a terminal: a table a person can read, and a one-line summary.

One row per record (id, log-prob, tokens, log-prob per token, boundary) and, under it, the
corpus figures pooled from the totals (total, per token, perplexity)::

    id        log-prob  tokens  per token  boundary
    capital     -12.31       3     -4.104  joint
    ...
    6 records · total -123.45 nats · -2.345 nats/token · perplexity 10.43

Only the first ``max_rows`` rows are kept (the summary counts every record); JSONL with all
the per-token fields is what ``-o FILE`` or ``--jsonl`` give.
"""

from __future__ import annotations

import math
from typing import Any

from .metrics import CorpusTotals
from .types import Score


class ScoreTable:
    """Collects scores (:meth:`add`) and prints them (:meth:`print`)."""

    def __init__(self, *, max_rows: int = 100) -> None:
        self.max_rows = max_rows
        self.rows: list[tuple[str, float, int, float, str]] = []
        self.totals = CorpusTotals()

    def add(self, score: Score) -> None:
        self.totals.add(score)
        if len(self.rows) < self.max_rows:
            ident = "" if score.id is None else str(score.id)
            self.rows.append((ident, score.logprob, score.num_tokens,
                              score.logprob_per_token, score.boundary))

    def table(self, width: int = 80) -> Any:
        """The rich Table of the kept rows for a ``width``-column console; numbers are never
        cut (ids are, when narrow)."""
        from rich.table import Table

        rows = [(ident or f"#{n}", _num(lp, 2), str(tokens), _num(per_token, 3), boundary)
                for n, (ident, lp, tokens, per_token, boundary) in enumerate(self.rows, 1)]
        headers = ("id", "log-prob", "tokens", "per token", "boundary")
        widths = [max([len(name), *(len(r[i]) for r in rows)])
                  for i, name in enumerate(headers)]
        room = width - sum(widths[1:]) - 2 * (len(headers) - 1)   # 2 spaces between columns
        t = Table(box=None, pad_edge=False, header_style="bold")
        t.add_column(headers[0], overflow="ellipsis", no_wrap=True,
                     max_width=max(4, min(widths[0], room)))
        for i, name in enumerate(headers[1:], start=1):   # never narrower than its widest cell
            t.add_column(name, justify="left" if i == 4 else "right", no_wrap=True,
                         min_width=widths[i])
        for row in rows:
            t.add_row(*row)
        return t

    def summary(self) -> str:
        """``N records · total X nats · Y nats/token · perplexity Z``."""
        st = self.totals.stats()
        shown = (f" (first {len(self.rows)} shown; -o FILE or --jsonl for all)"
                 if st.num_examples > len(self.rows) else "")
        return (f"{st.num_examples} records{shown} · total {_num(st.total_logprob, 2)} nats · "
                f"{_num(st.logprob_per_token, 3)} nats/token · "
                f"perplexity {_num(st.perplexity, 2)}")

    def print(self, console: Any = None) -> None:
        from rich.console import Console

        console = console or Console()
        if self.rows:
            console.print(self.table(console.width))
        console.print(self.summary(), highlight=False, markup=False)


def _num(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"
