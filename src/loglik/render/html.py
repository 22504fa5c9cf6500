"""A self-contained HTML report: each response token coloured by its log-prob or rank.

In the spirit of GLTR (Gehrmann et al., 2019): a token is green when the model ranked it
first, yellow in the top 10, red in the top 100, purple beyond — or, colouring by log-prob,
green for p >= 0.5, yellow >= 0.1, red >= 0.01, purple below. Hovering (or focusing, or
linking to ``#t-EXAMPLE-TOKEN``) a token shows its probability, log-prob, rank, entropy and
the top alternatives. One file, inline CSS and a few lines of inline script, nothing fetched
at view time. Every piece of text is HTML-escaped: a response containing ``<script>``
renders as text.

* :func:`explain_report` — a list of :class:`~loglik.explain.Explanation`;
* :func:`score_report` — a list of :class:`~loglik.types.Score` (``loglik score --html``);
* :func:`compare_report` — the same texts scored by two models, side by side, with the
  per-token differences when both tokenize the text the same way (``loglik compare --html``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import Any

from ..explain import Explanation, TokenRow, from_score

COLOR_BY = ("logprob", "rank")
BUCKET_COLORS = ("#8fe08f", "#ffe680", "#ff9d9d", "#cfb0ff")   # best .. worst
RANK_EDGES = (1, 10, 100)                 # rank <= edge -> bucket
PROB_EDGES = (0.5, 0.1, 0.01)             # prob >= edge -> bucket

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;
 background:#fff;max-width:1200px}
h1{font-size:20px;margin:0 0 6px} .meta{color:#555;font-size:13px;margin-bottom:12px}
.legend span.sw{display:inline-block;padding:1px 8px;margin-right:6px;border-radius:3px;
 font-size:12px} .controls{margin:8px 0 16px} .controls button{margin-right:6px}
.ex{border:1px solid #ddd;border-radius:6px;padding:10px 12px;margin:12px 0}
.ex h2{font-size:14px;margin:0 0 6px;font-weight:600}
.prompt{color:#777;white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;font-size:14px}
.resp{font-family:ui-monospace,Menlo,monospace;font-size:14px;line-height:2.1;
 white-space:pre-wrap;word-break:break-word}
.t{position:relative;border-radius:3px;padding:1px 0;cursor:default;outline:none}
.t .tip{display:none;position:absolute;left:0;top:1.9em;z-index:10;background:#fff;
 border:1px solid #888;border-radius:5px;padding:6px 8px;white-space:nowrap;
 box-shadow:0 2px 8px rgba(0,0,0,.25);font-size:12px;line-height:1.4;color:#111}
.t:hover .tip,.t:focus .tip,.t:target .tip{display:block}
.tip table{border-collapse:collapse;margin-top:4px} .tip td{padding:0 6px 0 0}
.sum{font-size:13px;color:#333;margin-top:4px}
.cols{display:grid;grid-template-columns:1fr 1fr;gap:12px}
.ex h3{font-size:13px;margin:8px 0 4px}
.note{color:#a00;font-size:12px}
"""

_SCRIPT = """
(function(){
  var root=document.documentElement, body=document.body;
  function use(mode){
    body.classList.remove('by-logprob','by-rank','by-diff'); body.classList.add('by-'+mode);
    var bs=document.querySelectorAll('.controls button');
    for(var i=0;i<bs.length;i++){bs[i].disabled=(bs[i].getAttribute('data-mode')===mode);}
  }
  var bs=document.querySelectorAll('.controls button');
  for(var i=0;i<bs.length;i++){bs[i].addEventListener('click',function(){
    use(this.getAttribute('data-mode'));});}
  use(body.getAttribute('data-color-by'));
  root.setAttribute('data-loglik','ready');
})();
"""


def _bucket_css() -> str:
    rules = []
    for i, color in enumerate(BUCKET_COLORS):
        rules.append(f"body.by-logprob .lp{i},body.by-rank .rk{i}{{background:{color}}}")
    return "\n".join(rules)


def prob_bucket(logprob: float) -> int:
    """0 (p >= 0.5) .. 3 (p < 0.01)."""
    p = math.exp(logprob)
    return next((i for i, edge in enumerate(PROB_EDGES) if p >= edge), len(PROB_EDGES))


def rank_bucket(rank: int | None) -> int | None:
    """0 (rank 1), 1 (top 10), 2 (top 100), 3 (beyond); None when the rank is unknown."""
    if rank is None:
        return None
    return next((i for i, edge in enumerate(RANK_EDGES) if rank <= edge), len(RANK_EDGES))


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def _tooltip(row: TokenRow, extra: str = "") -> str:
    lines = [f"<b>{escape(row.token)}</b> (id {row.token_id})",
             f"p = {_fmt(row.prob, '.4f')} &nbsp; log p = {_fmt(row.logprob, '.4f')}",
             f"rank {row.rank if row.rank is not None else 'n/a'} &nbsp; "
             f"entropy {_fmt(row.entropy, '.3f')} nats",
             f"running sum {row.cumulative:.4f}"]
    if extra:
        lines.append(extra)
    tip = "<br>".join(lines)
    if row.top:
        cells = "".join(f"<tr><td>{escape(a.token)}</td><td>{a.prob:.4f}</td></tr>"
                        for a in row.top)
        tip += f"<table><tr><td><i>top</i></td><td></td></tr>{cells}</table>"
    return f'<span class="tip">{tip}</span>'


def _token_span(row: TokenRow, anchor: str, *, diff_class: str | None = None,
                extra: str = "") -> str:
    if diff_class is None:               # coloured by probability or rank (the page's mode)
        classes = ["t", f"lp{prob_bucket(row.logprob)}"]
        rb = rank_bucket(row.rank)
        if rb is not None:
            classes.append(f"rk{rb}")
    else:                                # coloured by a difference between two models
        classes = ["t", diff_class or "d0"]
    try:
        text = row.data.decode("utf-8")
    except UnicodeDecodeError:            # part of a character: show its bytes
        text = row.token
    after = "\n" if "\n" in text and not text.strip() else ""
    if not text.strip():
        text = row.token                  # a whitespace-only token stays visible
    text = escape(text)
    return (f'<span class="{" ".join(classes)}" id="{anchor}" tabindex="0" '
            f'data-logprob="{row.logprob:.6g}">{text}{_tooltip(row, extra)}</span>{after}')


def _tokens_html(expl: Explanation, prefix: str) -> str:
    return "".join(_token_span(r, f"{prefix}-{r.position}") for r in expl.rows)


def _page(title: str, body: str, *, color_by: str, modes: Sequence[str], meta: str) -> str:
    if color_by not in modes:
        raise ValueError(f"color_by must be one of {', '.join(modes)}, got {color_by!r}")
    names = {"logprob": "colour by log-prob", "rank": "colour by rank",
             "diff": "colour by difference"}
    buttons = "".join(f'<button data-mode="{m}">{names[m]}</button>' for m in modes)
    legend = ("<span class='sw' style='background:{0}'>p ≥ 0.5 / rank 1</span>"
              "<span class='sw' style='background:{1}'>p ≥ 0.1 / top 10</span>"
              "<span class='sw' style='background:{2}'>p ≥ 0.01 / top 100</span>"
              "<span class='sw' style='background:{3}'>lower</span>").format(*BUCKET_COLORS)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title>"
        f"<style>{_CSS}\n{_bucket_css()}\n{_diff_css()}</style></head>"
        f'<body class="by-{color_by}" data-color-by="{color_by}">'
        f"<h1>{escape(title)}</h1><div class=\"meta\">{meta}</div>"
        f'<div class="legend">{legend}</div><div class="controls">{buttons}</div>'
        f"{body}<script>{_SCRIPT}</script></body></html>\n")


def _example_block(expl: Explanation, index: int, heading: str | None = None) -> str:
    head = heading or (f"#{index}" + (f" · id {expl.id}" if expl.id is not None else ""))
    prompt = (f'<div class="prompt">{escape(expl.prompt)}</div>'
              if expl.prompt is not None else "")
    ppl = math.exp(-expl.logprob / len(expl.rows)) if expl.rows else math.nan
    summary = (f'<div class="sum">log Pr = {expl.logprob:.4f} nats · {len(expl.rows)} tokens · '
               f"perplexity {ppl:.3f} · boundary {escape(expl.boundary)}</div>")
    return (f'<div class="ex" id="ex-{index}"><h2>{escape(head)}</h2>{prompt}'
            f'<div class="resp">{_tokens_html(expl, f"t-{index}")}</div>{summary}</div>')


def explain_report(explanations: Sequence[Explanation], *, title: str = "loglik report",
                   color_by: str = "logprob", model: str | None = None) -> str:
    """One HTML page for the given explanations (see the module docstring)."""
    meta = f"{len(explanations)} example(s)" + (f" · model {escape(model)}" if model else "")
    body = "".join(_example_block(e, i) for i, e in enumerate(explanations))
    return _page(title, body, color_by=color_by, modes=COLOR_BY, meta=meta)


def score_report(scores: Sequence[Any], tokenizer: Any = None, *,
                 prompts: Sequence[str | None] | None = None, title: str = "loglik scores",
                 color_by: str = "logprob", model: str | None = None,
                 omitted: int = 0) -> str:
    """The report of ``loglik score --html``: one block per :class:`~loglik.types.Score`.

    Ranks, entropies and alternatives appear when the scores carry them (``rank=True``,
    ``entropy=True``, ``top_k=k``). ``omitted`` says how many further records the file
    leaves out.
    """
    prompts = prompts if prompts is not None else [None] * len(scores)
    expls = [from_score(s, tokenizer, prompt=p) for s, p in zip(scores, prompts)]
    page = explain_report(expls, title=title, color_by=color_by, model=model)
    if omitted:
        note = (f'<div class="note">{omitted} further record(s) are in the JSONL output '
                "but not in this report</div>")
        page = page.replace("</body>", note + "</body>", 1)
    return page


# -- compare ---------------------------------------------------------------------------------
_DIFF_EDGES = (0.5, 0.05)   # |delta| in nats


def _diff_css() -> str:
    return (".dp1{background:#8fb6ff} .dp0{background:#d2e2ff} .d0{background:#eee} "
            ".dn0{background:#ffd6d6} .dn1{background:#ff9d9d}")


def _diff_class(delta: float) -> str:
    if abs(delta) < _DIFF_EDGES[1]:
        return ""
    strength = 1 if abs(delta) >= _DIFF_EDGES[0] else 0
    return f"dp{strength}" if delta > 0 else f"dn{strength}"


def compare_report(scores_a: Sequence[Any], scores_b: Sequence[Any], *,
                   names: tuple[str, str] = ("A", "B"), tokenizer_a: Any = None,
                   tokenizer_b: Any = None, prompts: Sequence[str | None] | None = None,
                   title: str = "loglik compare", color_by: str = "logprob") -> str:
    """The same texts under two models, side by side.

    Each example shows the response under model A and model B, tokens coloured as in
    :func:`explain_report`, and its difference ``Δ = log Pr_A − log Pr_B`` (A minus B, as
    ``loglik compare``'s terminal table and ``diff_total`` in ``--json``: positive when A
    makes the response more probable). Where both models tokenize the response
    identically, a third line colours each token by ``log p_A − log p_B`` (blue: A more
    probable, red: B) and its tooltip gives both values; otherwise only the sums are
    compared.

    Args:
        scores_a, scores_b: equally long lists of :class:`~loglik.types.Score`, item i of both
            for the same prompt/response.
        names: the two models' labels.
        tokenizer_a, tokenizer_b: used to show tokens as text (optional).
        prompts: shown above each example (optional).
    """
    if len(scores_a) != len(scores_b):
        raise ValueError(f"compare_report needs the same examples under both models: got "
                         f"{len(scores_a)} and {len(scores_b)} scores")
    prompts = prompts if prompts is not None else [None] * len(scores_a)
    blocks, wins = [], 0
    na, nb = (escape(n) for n in names)
    for i, (sa, sb, p) in enumerate(zip(scores_a, scores_b, prompts)):
        ea, eb = from_score(sa, tokenizer_a, prompt=p), from_score(sb, tokenizer_b, prompt=p)
        delta = ea.logprob - eb.logprob                 # a − b, as everywhere in loglik
        wins += delta > 0
        cols = (f'<div class="cols"><div><h3>{na}: {ea.logprob:.4f} nats</h3>'
                f'<div class="resp">{_tokens_html(ea, f"a-{i}")}</div></div>'
                f'<div><h3>{nb}: {eb.logprob:.4f} nats</h3>'
                f'<div class="resp">{_tokens_html(eb, f"b-{i}")}</div></div></div>')
        if [r.data for r in ea.rows] == [r.data for r in eb.rows]:
            spans = "".join(
                _token_span(ra, f"d-{i}-{ra.position}", diff_class=_diff_class(
                    ra.logprob - rb.logprob),
                    extra=f"{na}: {ra.logprob:.4f} · {nb}: {rb.logprob:.4f} · "
                          f"Δ ({na} − {nb}) {ra.logprob - rb.logprob:+.4f}")
                for ra, rb in zip(ea.rows, eb.rows))
            diff = (f'<h3>per-token difference Δ = {na} − {nb} (blue: higher under {na}, '
                    f"red: higher under {nb}, grey: within {_DIFF_EDGES[1]} nats)</h3>"
                    f'<div class="resp diff">{spans}</div>')
        else:
            diff = ('<div class="note">the two tokenizers split this response differently; '
                    "only the sums are compared</div>")
        prompt = f'<div class="prompt">{escape(p)}</div>' if p is not None else ""
        blocks.append(f'<div class="ex" id="ex-{i}"><h2>#{i} · Δ = {na} − {nb} = '
                      f"{delta:+.4f} nats</h2>{prompt}{cols}{diff}</div>")
    meta = (f"{len(blocks)} example(s) · Δ = log Pr({na}) − log Pr({nb}) · {na} more "
            f"probable than {nb} on {wins}")
    return _page(title, "".join(blocks), color_by=color_by, modes=COLOR_BY, meta=meta)


def write(path: str, page: str) -> None:
    """Write a report (UTF-8)."""
    from ..errors import InputError

    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
    except OSError as exc:
        raise InputError(f"cannot write the HTML report: {exc.strerror}", source=path) from None


class ReportCollector:
    """Gathers the first ``limit`` scores of a stream (with their prompts) for a report.

    ``loglik score --html FILE`` wraps its examples with :meth:`watch`, passes each score to
    :meth:`add` and calls :meth:`write` at the end; the JSONL output is unchanged.
    """

    def __init__(self, path: str, *, limit: int = 500) -> None:
        self.path, self.limit = path, limit
        self.prompts: list[str] = []
        self.scores: list[Any] = []
        self.seen = 0

    def watch(self, examples: Any) -> Any:
        for ex in examples:
            if len(self.prompts) < self.limit:
                self.prompts.append(ex.prompt)
            yield ex

    def add(self, score: Any) -> None:
        if not hasattr(score, "token_logprobs"):   # a FailedRecord: its prompt leaves too
            if len(self.scores) < len(self.prompts):
                del self.prompts[len(self.scores)]
            return
        self.seen += 1
        if len(self.scores) < self.limit:
            self.scores.append(score)

    def write(self, tokenizer: Any = None, *, model: str | None = None,
              color_by: str = "logprob") -> None:
        if color_by == "rank" and self.scores and self.scores[0].token_ranks is None:
            color_by = "logprob"          # no ranks were computed (--rank not given)
        write(self.path, score_report(self.scores, tokenizer, prompts=self.prompts,
                                      model=model, color_by=color_by,
                                      omitted=self.seen - len(self.scores)))


def comparison_report(comparison: Any, *, color_by: str = "logprob") -> str:
    """:func:`compare_report` of the first two models of a :class:`loglik.comparison.Comparison`."""
    toks = list(comparison.tokenizers) + [None, None]
    return compare_report(comparison.scores[0], comparison.scores[1],
                          names=(comparison.names[0], comparison.names[1]),
                          tokenizer_a=toks[0], tokenizer_b=toks[1],
                          prompts=[ex.prompt for ex in comparison.examples],
                          title=f"loglik compare: {comparison.names[0]} vs "
                                f"{comparison.names[1]}", color_by=color_by)
