"""Multiple choice: which continuation of a context does the model find most probable?

Each row has a context, a list of choices and optionally the index of the gold one. Every
choice is scored as a response to the context, and the pick is made under each rule:

=============  ===============================================================================
``sum``        argmax of log Pr(choice | context) (lm-evaluation-harness ``acc``)
``per_token``  argmax of log-prob / tokens (depends on the tokenizer)
``per_byte``   argmax of log-prob / UTF-8 bytes: ``acc_norm`` as it should be (comparable
               across tokenizers and scripts)
``per_char``   argmax of log-prob / characters (what lm-evaluation-harness's ``acc_norm``
               computes, see its issue 3278)
``mutual_info`` argmax of log Pr(choice | context) − log Pr(choice | neutral prompt)
=============  ===============================================================================

A row may be a conversation instead of a context: ``messages`` (OpenAI format, the
history) and ``choices``; each choice is a candidate final assistant message after the
history, scored as ``loglik score`` scores the conversation ``messages + [{"role":
"assistant", "content": choice}]`` (its last turn: content and end-of-turn tokens, rendered
with the chat template; :mod:`loglik.chat`). Its ``mutual_info`` rule scores the choice as
the assistant's reply to the single user message ``neutral_prompt``.

Ties go to the first choice. A choice with nothing to divide by (empty) never wins a
normalised rule. With gold labels, each rule's accuracy comes with its standard error
``sqrt(acc (1 − acc) / (n − 1))`` (the sample standard error of the mean, as lm-eval reports).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .data import read_records
from .errors import ConfigError, InputError
from .tokenize import move_whitespace
from .types import Example, Score

if TYPE_CHECKING:
    from .scorer import Scorer


@dataclass(frozen=True)
class ChoiceFields:
    """Which record fields hold the context, the choices, the gold index and the id."""

    context: str = "context"
    choices: str = "choices"
    gold: str = "gold"
    id: str = "id"
    messages: str = "messages"


@dataclass(frozen=True)
class ChoiceRow:
    """One multiple-choice question."""

    context: str
    choices: tuple[str, ...]
    gold: int | None = None
    id: Any = None
    source: str | None = None
    line: int | None = None
    messages: tuple[dict[str, Any], ...] | None = None   # a conversation's history

    def example(self, choice: str) -> Example:
        """The Example that scores ``choice`` after this row's context or history."""
        if self.messages is None:
            return Example(self.context, choice, source=self.source, line=self.line)
        return Example("", "", source=self.source, line=self.line,
                       messages=(*self.messages, {"role": "assistant", "content": choice}))


@dataclass
class ChoiceResult:
    """The scores of one row's choices and the pick under each rule."""

    id: Any
    logprobs: list[float]
    num_tokens: list[int]
    num_bytes: list[int]
    num_chars: list[int]
    logprobs_neutral: list[float] | None
    picks: dict[str, int]
    gold: int | None = None

    @property
    def correct(self) -> dict[str, bool] | None:
        if self.gold is None:
            return None
        return {rule: pick == self.gold for rule, pick in self.picks.items()}

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {} if self.id is None else {"id": self.id}
        rec.update(logprobs=self.logprobs, num_tokens=self.num_tokens,
                   num_bytes=self.num_bytes, num_chars=self.num_chars)
        if self.logprobs_neutral is not None:
            rec["logprobs_neutral"] = self.logprobs_neutral
        rec["picks"] = self.picks
        if self.gold is not None:
            rec.update(gold=self.gold, correct=self.correct)
        return rec


@dataclass
class ChoiceSummary:
    """Accuracy and standard error per rule (empty when no row has a gold label)."""

    num_rows: int
    num_gold: int
    accuracy: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"num_rows": self.num_rows, "num_gold": self.num_gold,
                "rules": {r: {"accuracy": self.accuracy[r], "stderr": self.stderr[r]}
                          for r in self.accuracy}}


@dataclass
class ChoiceResults:
    """What :func:`choose` returns: one result per row, in order, and the summary."""

    rows: list[ChoiceResult]
    summary: ChoiceSummary

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary.to_dict(), "rows": [r.to_record() for r in self.rows]}


# -- input -------------------------------------------------------------------------------------
def record_to_row(record: Mapping[str, Any], fields: ChoiceFields = ChoiceFields(), *,
                  source: str | None = None, line: int | None = None) -> ChoiceRow:
    """Validate one record: a string context, a non-empty list of string choices, a gold
    index (int, or the text of one choice) or none."""
    where = dict(source=source, line=line)
    history = None
    if fields.context not in record and fields.messages in record:
        from .data import messages_field

        history = messages_field(record, fields.messages, needs_assistant=False, **where)
        record = {**record, fields.context: ""}
    for name, flag in ((fields.context, "--context-field"), (fields.choices, "--choices-field")):
        if name not in record:
            present = ", ".join(record) or "none"
            also = (f' (or "{fields.messages}", a conversation)'
                    if name == fields.context else "")
            raise InputError(f'missing field "{name}"{also} (fields present: {present}); pass '
                             f"{flag} NAME", field=name, **where)
    context, choices = record[fields.context], record[fields.choices]
    if not isinstance(context, str):
        raise InputError(f'field "{fields.context}" must be a string, got '
                         f"{type(context).__name__}", field=fields.context, **where)
    if (not isinstance(choices, (list, tuple)) or not choices
            or not all(isinstance(c, str) for c in choices)):
        raise InputError(f'field "{fields.choices}" must be a non-empty list of strings, got '
                         f"{str(choices)[:60]}", field=fields.choices, **where)
    gold = record.get(fields.gold)
    if isinstance(gold, str) and not isinstance(gold, bool):
        if gold.strip().lstrip("-").isdigit():
            gold = int(gold)
        elif gold in choices:
            gold = list(choices).index(gold)
        else:
            raise InputError(f'field "{fields.gold}" is {gold!r}, which is neither an index '
                             "nor one of the choices", field=fields.gold, **where)
    if gold is not None and (isinstance(gold, bool) or not isinstance(gold, int)
                             or not 0 <= gold < len(choices)):
        raise InputError(f'field "{fields.gold}" must be an index from 0 to {len(choices) - 1} '
                         f"(there are {len(choices)} choices), got {gold!r}",
                         field=fields.gold, **where)
    return ChoiceRow(context, tuple(choices), gold, record.get(fields.id), source, line,
                     history)


def read_choice_rows(path: str, fields: ChoiceFields = ChoiceFields(),
                     fmt: str | None = None) -> Iterator[ChoiceRow]:
    """Stream the multiple-choice rows of JSONL / Parquet files (a file, folder, glob; ``-``)."""
    for source, line, record in read_records(path, fmt):
        yield record_to_row(record, fields, source=source, line=line)


def to_rows(items: Iterable[Any], fields: ChoiceFields = ChoiceFields()) -> list[ChoiceRow]:
    """Accept ChoiceRows, dicts or ``(context, choices[, gold])`` tuples from Python."""
    rows = []
    for n, item in enumerate(items, start=1):
        if isinstance(item, ChoiceRow):
            rows.append(item)
        elif isinstance(item, Mapping):
            rows.append(record_to_row(item, fields, source="<python>", line=n))
        elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
            rec = {fields.context: item[0], fields.choices: item[1]}
            if len(item) == 3:
                rec[fields.gold] = item[2]
            rows.append(record_to_row(rec, fields, source="<python>", line=n))
        else:
            raise InputError(f"expected (context, choices[, gold]), a dict or a ChoiceRow, got "
                             f"{type(item).__name__}", source="<python>", line=n)
    return rows


# -- picking -----------------------------------------------------------------------------------
def argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first on ties; nan never wins."""
    best, best_i = -math.inf, 0
    for i, v in enumerate(values):
        if not math.isnan(v) and v > best:
            best, best_i = v, i
    return best_i


def picks(logprobs: Sequence[float], num_tokens: Sequence[int], num_bytes: Sequence[int],
          num_chars: Sequence[int], logprobs_neutral: Sequence[float] | None = None
          ) -> dict[str, int]:
    """The chosen index under every rule (``mutual_info`` only with neutral log-probs)."""
    def norm(counts: Sequence[int]) -> list[float]:
        return [lp / c if c else math.nan for lp, c in zip(logprobs, counts)]

    out = {"sum": argmax(logprobs), "per_token": argmax(norm(num_tokens)),
           "per_byte": argmax(norm(num_bytes)), "per_char": argmax(norm(num_chars))}
    if logprobs_neutral is not None:
        out["mutual_info"] = argmax([a - b for a, b in zip(logprobs, logprobs_neutral)])
    return out


def summarize(results: Sequence[ChoiceResult]) -> ChoiceSummary:
    """Accuracy and its standard error per rule over the rows that have a gold label."""
    gold = [r for r in results if r.gold is not None]
    summary = ChoiceSummary(len(results), len(gold))
    if not gold:
        return summary
    n = len(gold)
    for rule in gold[0].picks:
        acc = sum(r.picks[rule] == r.gold for r in gold) / n
        summary.accuracy[rule] = acc
        summary.stderr[rule] = math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else math.nan
    return summary


# -- scoring -----------------------------------------------------------------------------------
def _score_rows(scorer: Scorer, rows: Sequence[ChoiceRow]) -> list[list[Score]]:
    """Every choice of every row in one ``score_many`` call.

    The scorer reads a context shared by several choices once (``share_context``, what
    ``Scorer.score_choices`` does for one row) and batches across rows too; calling
    ``score_choices`` row by row gives the same numbers but one forward pass per row
    (about 14x slower on 200 rows x 4 choices with the tiny test model).
    """
    if any(r.messages is not None for r in rows) and scorer.options.turns != "last":
        raise ConfigError("choose scores each candidate as the final assistant message; "
                          "--turns all (turns='all') does not apply, leave it out")
    flat = [r.example(c) for r in rows for c in r.choices]
    scores = scorer.score_many(flat)
    out, s = [], 0
    for r in rows:
        out.append(scores[s:s + len(r.choices)])
        s += len(r.choices)
    return out


def _neutral_scores(scorer: Scorer, rows: Sequence[ChoiceRow], neutral_prompt: str,
                    by_text: dict[tuple[bool, str], float] | None = None) -> list[list[float]]:
    """log Pr(choice | neutral prompt), each distinct choice text scored once.

    The choice is scored as the same text as after the context: when the scorer moves the
    context's trailing whitespace into the response, the neutral response gets it too.
    A conversation's choice is the assistant's reply to one user message, ``neutral_prompt``.
    ``by_text`` carries the (is conversation, text) pairs already scored and is updated.
    """
    by_text = {} if by_text is None else by_text
    move = scorer.options.whitespace == "move"
    keys = [[(True, c) if r.messages is not None else
             (False, move_whitespace(r.context, c)[1] if move else c) for c in r.choices]
            for r in rows]
    unique = sorted({k for ks in keys for k in ks} - set(by_text))
    user = {"role": "user", "content": neutral_prompt}
    scores = scorer.score_many([
        Example("", "", source="<neutral>", messages=(user, {"role": "assistant",
                                                             "content": t}))
        if chat else Example(neutral_prompt, t, source="<neutral>") for chat, t in unique])
    by_text.update((k, s.logprob) for k, s in zip(unique, scores))
    return [[by_text[k] for k in ks] for ks in keys]


#: rows scored per step: the unit of ``progress`` (each step is planned on its own)
STEP = 64


def choose(scorer: Scorer, rows: Iterable[Any], *, fields: ChoiceFields = ChoiceFields(),
           mutual_info: bool = True, neutral_prompt: str = "",
           progress: Callable[[int], None] | None = None) -> ChoiceResults:
    """Score every choice of every row and pick one under each rule.

    Args:
        scorer: a :class:`loglik.Scorer`.
        rows: ChoiceRows, dicts (``context``, ``choices``, optional ``gold``) or
            ``(context, choices[, gold])`` tuples.
        mutual_info: also score each choice after ``neutral_prompt`` and pick by
            log Pr(choice | context) − log Pr(choice | neutral prompt).
        neutral_prompt: the context-free prompt (default empty: the choice after BOS).
        progress: called with the number of rows just scored, after every :data:`STEP` rows.

    Returns:
        :class:`ChoiceResults` with one :class:`ChoiceResult` per row and the accuracies.

    Example:
        >>> r = choose(scorer, [("The capital of France is", [" Paris", " Rome"], 0)])  # doctest: +SKIP
        >>> r.rows[0].picks["per_byte"], r.summary.accuracy["sum"]                       # doctest: +SKIP
    """
    rows = to_rows(rows, fields)
    if not rows:
        raise ConfigError("choose needs at least one row; the input is empty")
    scores: list[list[Score]] = []
    neutral: list[list[float]] | None = [] if mutual_info else None
    seen: dict[tuple[bool, str], float] = {}
    for start in range(0, len(rows), STEP):
        step = rows[start:start + STEP]
        scores += _score_rows(scorer, step)
        if neutral is not None:
            neutral += _neutral_scores(scorer, step, neutral_prompt, seen)
        if progress is not None:
            progress(len(step))
    results = []
    for k, (row, sc) in enumerate(zip(rows, scores)):
        lp = [s.logprob for s in sc]
        nt, nb, nc = ([s.num_tokens for s in sc], [s.num_bytes for s in sc],
                      [s.num_chars for s in sc])
        ln = neutral[k] if neutral is not None else None
        results.append(ChoiceResult(row.id, lp, nt, nb, nc, ln, picks(lp, nt, nb, nc, ln),
                                    row.gold))
    return ChoiceResults(results, summarize(results))


def compare_choices(scorers: Sequence[Any] | Mapping[str, Any], rows: Iterable[Any], *,
                    names: Sequence[str] | None = None, fields: ChoiceFields = ChoiceFields(),
                    mutual_info: bool = True, neutral_prompt: str = "",
                    confidence: float = 0.95, num_bootstrap: int = 10_000, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """:func:`choose` under several models, and paired accuracy differences with bootstrap CIs.

    Returns a JSON-able dict: ``models`` (name, summary, per-row results) and ``pairs``
    (per rule: ``acc_diff`` = accuracy of a minus b, with the percentile interval of the
    resampled rows). ``progress`` is called with the rows just scored, model after model.
    """
    from .comparison import bootstrap_sums, percentile_interval

    if isinstance(scorers, Mapping):
        names = list(scorers) if names is None else list(names)
        scorers = list(scorers.values())
    scorers = list(scorers)
    names = list(names) if names is not None else [f"model{i + 1}" for i in range(len(scorers))]
    if len(names) != len(scorers) or len(set(names)) != len(names):
        raise ConfigError(f"need one distinct name per model; got {names}")
    rows = to_rows(rows, fields)
    results = [choose(s, rows, mutual_info=mutual_info, neutral_prompt=neutral_prompt,
                      progress=progress) for s in scorers]
    models = [{"name": n, **r.summary.to_dict()} for n, r in zip(names, results)]
    pairs = []
    gold = [i for i, r in enumerate(rows) if r.gold is not None]
    for a in range(len(scorers)):
        for b in range(a + 1, len(scorers)):
            pair: dict[str, Any] = {"a": names[a], "b": names[b], "rules": {}}
            for rule in (results[a].summary.accuracy if gold else ()):
                d = [float(results[a].rows[i].picks[rule] == rows[i].gold)
                     - float(results[b].rows[i].picks[rule] == rows[i].gold) for i in gold]
                boot = bootstrap_sums(d, num_samples=num_bootstrap, seed=seed) / len(d)
                lo, hi = percentile_interval(boot, confidence)
                pair["rules"][rule] = {"acc_diff": math.fsum(d) / len(d), "ci_low": lo,
                                       "ci_high": hi}
            pairs.append(pair)
    return {"models": models, "pairs": pairs, "results": results}



def choose_file(data: str, output: str | None = None, *, fields: ChoiceFields = ChoiceFields(),
                format: str | None = None, mutual_info: bool = True, neutral_prompt: str = "",
                scorer: Scorer | str | None = None, scorer_options: Mapping[str, Any] | None = None,
                progress: bool | None = None) -> ChoiceResults:
    """``loglik choose``: read every row (validated before any model loads), choose, and
    write one JSON line per row to ``output`` (``-``: stdout; None: nowhere).

    ``scorer`` is a :class:`loglik.Scorer`, or a model folder / hub id loaded with
    ``scorer_options`` (None: the embedded default model). ``progress``: a bar on stderr
    (None: when stderr is a terminal).
    """
    from .io import check_output, open_jsonl_output
    from .progress import Progress

    check_output(output)
    rows = list(read_choice_rows(data, fields, format))
    if scorer is None or isinstance(scorer, str):
        from .hub import check_model_source
        from .scorer import Scorer

        options = dict(scorer_options or {})
        check_model_source(scorer, revision=options.get("revision"))
        scorer = Scorer.from_pretrained(scorer, **options)
    with Progress("choosing", total=len(rows), enabled=progress) as bar:
        results = choose(scorer, rows, mutual_info=mutual_info, neutral_prompt=neutral_prompt,
                         progress=bar.advance)
    if output is not None:
        with open_jsonl_output(output) as writer:
            for r in results.rows:
                writer.write(r.to_record())
    return results
