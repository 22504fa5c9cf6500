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

    def table(self) -> Any:
        """The rich Table of the kept rows; numbers are never cut (ids are, when narrow)."""
        from rich.table import Table

        t = Table(box=None, pad_edge=False, header_style="bold")
        t.add_column("id", overflow="ellipsis", no_wrap=True, ratio=1, min_width=2)
        for name in ("log-prob", "tokens", "per token"):
            t.add_column(name, justify="right", no_wrap=True)
        t.add_column("boundary", no_wrap=True)
        for number, (ident, logprob, tokens, per_token, boundary) in enumerate(self.rows, 1):
            t.add_row(ident or f"#{number}", _num(logprob, 2), str(tokens), _num(per_token, 3),
                      boundary)
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
            console.print(self.table())
        console.print(self.summary(), highlight=False, markup=False)


def _num(x: float, digits: int) -> str:
    return "nan" if math.isnan(x) else f"{x:.{digits}f}"
