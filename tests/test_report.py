"""The HTML report: colours by hand-computed buckets, escaping, self-containment, the --html
flags, and a real headless Chromium rendering it."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import subprocess

import pytest

from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.render.html import BUCKET_COLORS, compare_report, explain_report

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser",
                                               "google-chrome")) if p), None)
EVIL = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='pwned'\">"


@pytest.fixture()
def fake():
    """p = 0.9, 0.2, 0.05, 0.001 for the four response tokens: one per colour bucket."""
    tok = WordTokenizer(["a", "b", "c", "d"])
    bos = tok.bos_token_id
    a, b, c, d = (tok.ids(" " + w)[0] for w in "abcd")
    a0 = tok.ids("a")[0]
    lm = FakeBackend(len(tok), {(bos, a0): {b: 0.9}, (bos, a0, b): {c: 0.2},
                                (bos, a0, b, c): {d: 0.05}, (bos, a0, b, c, d): {a: 0.001}})
    return Scorer(lm, tok), tok


def _classes(page):
    return re.findall(r'<span class="t ([^"]*)" id="([^"]+)"', page)


def test_buckets_by_probability_and_rank(fake):
    scorer, _ = fake
    e = scorer.explain("a", " b c d a", top_k=3)
    page = explain_report([e])
    spans = _classes(page)
    assert [s[1] for s in spans] == ["t-0-0", "t-0-1", "t-0-2", "t-0-3"]
    # ranks among 10 tokens: 0.2 beats 9 x 0.0889 (rank 1); 0.05 and 0.001 lose to 9 others
    assert [s[0] for s in spans] == ["lp0 rk0", "lp1 rk0", "lp2 rk1", "lp3 rk1"]
    assert "p = 0.0500" in page and "rank 10" in page and "running sum" in page
    assert f"{math.log(0.9 * 0.2 * 0.05 * 0.001):.4f}" in page


def test_tokens_are_escaped_and_nothing_is_fetched(llama_scorer):
    e = llama_scorer.explain("Say <b>hi</b> & ", EVIL, top_k=2)
    page = explain_report([e], title="<title>")
    assert page.count("<script>") == 1                      # ours, at the end
    assert "<img" not in page and "<b>hi" not in page
    assert e.text == " " + EVIL and "&lt;" in page
    assert "&lt;b&gt;hi&lt;/b&gt; &amp;" in page            # the prompt, escaped
    assert "<title>&lt;title&gt;</title>" in page
    tags = [t for t in re.findall(r"<[^>]*>", page.split("<script>")[0]) if t[1] != "!"]
    assert {re.match(r"</?(\w+)", t).group(1) for t in tags} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "div", "span",
        "button", "b", "br", "i", "table", "tr", "td"}
    for needle in ("src=", "href=", "@import", "url("):   # nothing fetched at view time
        assert not any(needle in t for t in tags), needle
    assert "@import" not in page and "url(" not in page


def test_compare_side_by_side(llama_scorer, gpt2_scorer, sp_tokenizer, bpe_tokenizer):
    pairs = [("The capital of France is", " Paris."), ("The dog", " sleeps.")]
    a = llama_scorer.score_many(pairs, rank=True)
    b = [llama_scorer.score(p, r + "") for p, r in pairs]
    b[0].token_logprobs = [v - 1.0 for v in b[0].token_logprobs]   # B: 1 nat worse per token
    b[0].logprob = math.fsum(b[0].token_logprobs)
    page = compare_report(a, b, names=("llama", "worse"), tokenizer_a=sp_tokenizer,
                          tokenizer_b=sp_tokenizer, prompts=[p for p, _ in pairs])
    # one definition of the difference everywhere: a − b (as compare's diff_total), labelled
    diff = re.findall(r'<span class="t ([^"]*)" id="d-0-\d+"', page)
    assert len(diff) == a[0].num_tokens and all(c.endswith("dp1") for c in diff)
    assert "Δ (llama − worse) +1.0000" in page and "Δ -1.0000" not in page
    delta = a[0].logprob - b[0].logprob
    assert delta == pytest.approx(a[0].num_tokens)
    assert f"#0 · Δ = llama − worse = {delta:+.4f} nats" in page
    assert "Δ = log Pr(llama) − log Pr(worse)" in page
    wins = sum(x.logprob > y.logprob for x, y in zip(a, b))     # example 1 is a tie (or ~)
    assert wins >= 1 and f"llama more probable than worse on {wins}" in page
    # different tokenizers: only the sums are compared, and the page says so
    g = gpt2_scorer.score_many(pairs)
    assert a[0].tokens != g[0].tokens
    page = compare_report(a, g, tokenizer_a=sp_tokenizer, tokenizer_b=bpe_tokenizer)
    assert page.count("split this response differently") == 2
    assert 'id="d-' not in page
    assert f"#0 · Δ = A − B = {a[0].logprob - g[0].logprob:+.4f} nats" in page
    with pytest.raises(ValueError, match="same examples"):
        compare_report(a, g[:1])


def _cli(argv):
    from loglik.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def test_score_html_leaves_the_jsonl_unchanged(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": p, "response": r}) + "\n" for i, (p, r)
                            in enumerate([("The dog", " sleeps."), ("x", EVIL)])))
    plain, with_html = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    html = tmp_path / "r.html"
    assert _cli(["score", str(data), "--model", tiny_model_dir, "-o", str(plain)])[0] == 0
    assert _cli(["score", str(data), "--model", tiny_model_dir, "-o", str(with_html),
                 "--html", str(html), "--rank", "--top-k", "3"])[0] == 0
    plain_recs = [json.loads(x) for x in plain.read_text().splitlines()]
    html_recs = [json.loads(x) for x in with_html.read_text().splitlines()]
    assert [r["token_logprobs"] for r in plain_recs] == [r["token_logprobs"] for r in html_recs]
    page = html.read_text(encoding="utf-8")
    assert len(_classes(page)) == sum(r["num_tokens"] for r in plain_recs)
    assert "id 1" in page and page.count("<script>") == 1
    assert 'data-color-by="rank"' in page                   # --rank colours by rank


def test_compare_cli_html(tiny_model_dir, tmp_path):
    pytest.importorskip("loglik.comparison")
    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps({"prompt": "The dog", "response": " sleeps."}) + "\n")
    html = tmp_path / "c.html"
    rc, _ = _cli(["compare", str(data), "--model", tiny_model_dir, "--model", tiny_model_dir,
                  "--name", "A", "--name", "B", "--num-bootstrap", "50", "--json",
                  "--no-token-stats", "--html", str(html)])
    page = html.read_text(encoding="utf-8")
    assert rc == 0 and "A vs B" in page and "Δ = A − B = +0.0000" in page
    assert re.search(r'id="d-0-0"', page)                    # same tokenizer: per-token line


# -- a real browser ----------------------------------------------------------------------------
def _chromium(tmp_path, *args):
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
           *args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)


def _rgb(color):
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def _rows_with(img, rgb):
    """Row indices of the screenshot holding pixels of exactly this colour."""
    import numpy as np

    px = (img[..., :3] * 255).round().astype(int)
    hit = (np.abs(px - np.array(rgb)) <= 1).all(-1)
    return np.nonzero(hit.any(1))[0]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                    "chromium; .ci/run installs it)")
def test_in_headless_chromium(fake, tmp_path):
    import matplotlib.image as mpimg

    scorer, _ = fake
    e1 = scorer.explain("a", " b c d a", top_k=3)
    words = EVIL.split(" ")
    tok = WordTokenizer(["x", *words])
    e2 = Scorer(FakeBackend(len(tok)), tok).explain("x", " " + EVIL)   # markup as tokens
    page = explain_report([e1, e2], title="loglik report")
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    url = path.as_uri()

    dom = _chromium(tmp_path, "--dump-dom", url).stdout
    assert 'data-loglik="ready"' in dom                 # our script ran
    assert "<title>loglik report</title>" in dom and "pwned" not in dom.split("<body")[0]
    assert "<img" not in dom                            # the response's markup stayed text
    assert 'class="by-logprob"' in dom

    plain, tip = tmp_path / "plain.png", tmp_path / "tip.png"
    _chromium(tmp_path, f"--screenshot={plain}", "--window-size=800,500", url)
    _chromium(tmp_path, f"--screenshot={tip}", "--window-size=800,500", url + "#t-0-3")
    a, b = mpimg.imread(plain), mpimg.imread(tip)
    assert a.shape[:2] == (500, 800)
    legend = min(_rows_with(a, _rgb(BUCKET_COLORS[0])))
    for color in BUCKET_COLORS:                          # every bucket colours a token
        rows = _rows_with(a, _rgb(color))
        assert len(rows) and rows.max() > legend + 60, color
    changed = (abs(a - b).sum(-1) > 0.1).any(1).nonzero()[0]
    assert len(changed) > 40 and changed.min() > legend + 60   # the tooltip opened below
