"""What an audit reports: one :class:`CheckResult` per check, one :class:`RecordResult` per
line of a ``--check`` file, gathered in an :class:`AuditReport`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["pass", "fail", "skip"]

DIAGNOSES = ("ok", "shifted", "prompt_included", "bos_scored", "bos_missing", "mean_not_sum",
             "log_base_2", "log_base_10", "probabilities_added", "unknown")


@dataclass
class CheckResult:
    """One check: its verdict, a one-line summary and the numbers behind it."""

    name: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """A skipped check did not fail."""
        return self.status != "fail"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "status": self.status,
                "summary": self.summary, **self.details}


@dataclass
class RecordResult:
    """One record of a ``--check`` file, recomputed and diagnosed."""

    index: int                      # 0-based: the file's line number - 1
    ok: bool
    diagnosis: str                  # one of DIAGNOSES
    reason: str
    expected_logprob: float | None = None
    reported_logprob: float | None = None
    max_abs_diff: float | None = None   # token by token, when the counts agree

    @property
    def line(self) -> int:
        """The 1-based line of the file, as every other message counts lines."""
        return self.index + 1

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "index": self.index, "ok": self.ok, "diagnosis": self.diagnosis,
                "reason": self.reason, "expected_logprob": self.expected_logprob,
                "reported_logprob": self.reported_logprob, "max_abs_diff": self.max_abs_diff}


@dataclass
class AuditReport:
    checks: list[CheckResult]
    records: list[RecordResult] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(f"no check named {name!r}; checks: {[c.name for c in self.checks]}")

    def to_dict(self) -> dict[str, Any]:
        """The ``loglik audit --json`` object."""
        out: dict[str, Any] = {"passed": self.passed,
                               "checks": [c.to_dict() for c in self.checks]}
        if self.records is not None:
            out["records"] = [r.to_dict() for r in self.records]
        return out

    def print(self, console: Any = None) -> None:
        """PASS / FAIL per check with its numbers, and the disagreeing records, on a console."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        style = {"pass": "[bold green]PASS[/]", "fail": "[bold red]FAIL[/]",
                 "skip": "[yellow]SKIP[/]"}
        for c in self.checks:
            console.print(f"{style[c.status]}  [bold]{c.name}[/]: {c.summary}", highlight=False)
            for key, value in c.details.items():
                if isinstance(value, (list, dict)) and not value:
                    continue                     # nothing to say (no problems, no worst case)
                if isinstance(value, dict) and len(value) > 3:
                    console.print(f"        {key}:", highlight=False, markup=False)
                    for k, v in value.items():
                        console.print(f"            {k}: {_short(v)}", highlight=False,
                                      markup=False)
                    continue
                console.print(f"        {key}: {_short(value)}", highlight=False,
                              markup=False)
        if self.records:
            bad = [r for r in self.records if not r.ok]
            console.print(f"\n{len(self.records) - len(bad)} of {len(self.records)} records "
                          "agree", highlight=False)
            if bad:
                t = Table("line", "diagnosis", "reported", "expected", "why")
                for r in bad[:50]:
                    t.add_row(str(r.line), r.diagnosis, _num(r.reported_logprob),
                              _num(r.expected_logprob), r.reason)
                console.print(t)
        console.print("\n" + ("[bold green]all checks passed[/]" if self.passed
                              else "[bold red]some checks failed[/]"))


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        text = ", ".join(f"{k}={_short(v)}" for k, v in value.items())
    else:
        text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= 200 else text[:197] + "..."
