"""The ``compare`` and ``explain`` commands as library calls: load, compute, write every view.

``loglik compare`` and ``loglik explain`` parse their arguments and make one call here. Each
function loads the models (``load`` holds :meth:`loglik.Scorer.from_pretrained`'s keyword
arguments), computes with :mod:`loglik.comparison`, :mod:`loglik.choices` or
:mod:`loglik.explain`, and writes what was asked for: the HTML report, the plot, one JSON
object or the terminal tables of :mod:`loglik.render.terminal` (fitted to the console's width;
``wide=True`` keeps every column). Every difference is a − b, in every view.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any

from rich.console import Console

from .choices import ChoiceFields, compare_choices, read_choice_rows
from .comparison import Comparison, compare
from .data import Fields, read_examples
from .default_model import default_model_path
from .errors import ConfigError
from .explain import Explanation, explain
from .progress import Progress
from .render import terminal
from .scorer import Scorer


def model_names(models: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """The given names, or the model paths shortened to what tells them apart."""
    if names:
        if len(names) != len(models):
            raise ConfigError(f"got {len(names)} --name for {len(models)} --model; give one "
                              "name per model, in the same order")
        return list(names)
    out = [os.path.basename(os.path.normpath(m)) or m for m in models]
    if len(set(out)) < len(out):
        out = list(models)
    if len(set(out)) < len(out):
        out = [f"{m}#{i + 1}" for i, m in enumerate(models)]
    return out


def _console(out: IO[str] | None, wide: bool) -> tuple[Console, bool]:
    """The console for the tables and whether to lay them out wide (asked, or not a tty)."""
    console = Console(file=out)
    return console, wide or not console.is_terminal


def run_compare(models: Sequence[str], data: str, *, names: Sequence[str] | None = None,
                fields: Fields = Fields(), fmt: str | None = None,
                load: Mapping[str, Any] | None = None, choices: ChoiceFields | None = None,
                confidence: float = 0.95, num_bootstrap: int = 10_000, seed: int = 0,
                top: int = 5, token_stats: bool = True, detail: bool = False,
                plot: str | None = None, plot_pair: int = 0, plot_example: int | None = None,
                html: str | None = None, as_json: bool = False, wide: bool = False,
                progress: bool | None = None, out: IO[str] | None = None) -> Comparison | dict:
    """``loglik compare``: score ``data`` under every model and print the comparison.

    With fewer than two ``models`` the embedded default model takes the first place (alone:
    its own figures). ``choices`` reads multiple-choice rows and compares accuracies.
    ``progress``: a bar on stderr per step of examples (None: when stderr is a terminal).
    Returns the :class:`~loglik.comparison.Comparison` (or the choices' dict).
    """
    models = list(models)
    if len(models) < 2:
        models = [default_model_path(), *models]
    if plot and len(models) < 2:
        raise ConfigError("--plot draws the differences between two models; pass --model")
    names = model_names(models, names)
    scorers = {n: Scorer.from_pretrained(m, **(load or {})) for n, m in zip(names, models)}
    if choices is not None:
        rows = list(read_choice_rows(data, choices, fmt))
        with Progress("comparing", total=len(rows) * len(scorers), enabled=progress) as bar:
            result = compare_choices(scorers, rows, confidence=confidence,
                                     num_bootstrap=num_bootstrap, seed=seed,
                                     progress=bar.advance)
        result.pop("results")
        if as_json:
            print(json.dumps(result, ensure_ascii=False), file=out)
        else:
            console, lay_wide = _console(out, wide)
            terminal.print_choices(result["models"], result["pairs"], confidence=confidence,
                                   console=console, wide=lay_wide)
        return result

    examples = list(read_examples(data, fields, fmt))
    with Progress("comparing", total=len(examples) * len(scorers), enabled=progress) as bar:
        comparison = compare(scorers, examples, confidence=confidence,
                             num_bootstrap=num_bootstrap, seed=seed, top=top,
                             token_stats=token_stats, detail=detail, progress=bar.advance)
    if plot:
        from .render.plots import plot_comparison

        plot_comparison(comparison, plot, pair=plot_pair, example=plot_example)
    if html:
        from .render.html import comparison_report, write

        write(html, comparison_report(comparison))
    if as_json:
        print(json.dumps(comparison.to_dict(), ensure_ascii=False, default=str), file=out)
    else:
        console, lay_wide = _console(out, wide)
        terminal.print_comparison(comparison, console, wide=lay_wide)
        if plot:
            console.print(f"plot written to {plot}", highlight=False)
    return comparison


def read_messages_arg(value: str) -> list[Any]:
    """``--messages``: JSON text, or a file holding the messages (or a record with them)."""
    from .errors import InputError

    text, source = value, "--messages"
    if not value.lstrip().startswith(("[", "{")):
        try:
            with open(value, encoding="utf-8") as handle:
                text, source = handle.read(), value
        except OSError as exc:
            raise InputError(f"--messages is neither JSON nor a readable file: {exc.strerror}; "
                             'pass \'[{"role": "user", "content": ...}, ...]\' or a .json file',
                             source=value) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        lines = [x for x in text.splitlines() if x.strip()]
        if exc.msg == "Extra data" and len(lines) > 1:
            raise InputError(f"this file holds {len(lines)} JSON lines and --messages explains "
                             "one conversation; pass a file with one record (or its messages "
                             "list), or score them all with `loglik score FILE`",
                             source=source, field="--messages") from None
        raise InputError(f"the messages are not valid JSON ({exc.msg}, line {exc.lineno})",
                         source=source, field="--messages") from None
    if isinstance(data, dict) and "messages" in data:
        data = data["messages"]
    return data


def run_explain(prompt: str | None, response: str | None, *, model: str | None = None,
                messages: Sequence[Any] | None = None,
                load: Mapping[str, Any] | None = None, top_k: int = 5,
                html: str | None = None, color_by: str = "logprob", as_json: bool = False,
                wide: bool = False, out: IO[str] | None = None) -> Explanation:
    """``loglik explain``: one pair's per-token table (or JSON object, or HTML report)."""
    scorer = Scorer.from_pretrained(model, **(load or {}))
    expl = explain(scorer, prompt, response, messages=messages, top_k=top_k)
    if html:
        from .render.html import explain_report, write

        write(html, explain_report([expl], title="loglik explain", color_by=color_by,
                                   model=model or "the embedded model"))
    if as_json:
        print(json.dumps(expl.to_dict(), ensure_ascii=False), file=out)
        return expl
    console, lay_wide = _console(out, wide)
    terminal.print_explanation(expl, console, wide=lay_wide)
    if html:
        console.print(f"report written to {html}", highlight=False)
    return expl
