"""explain: the per-token decomposition, checked by hand and against the float64 reference."""

from __future__ import annotations

import json
import math

import pytest

from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.explain import from_score, token_bytes, visible


@pytest.fixture()
def fake_scorer():
    tok = WordTokenizer(["the", "cat", "sat"])
    the, cat, sat = tok.ids("the cat sat")
    lm = FakeBackend(vocab_size=len(tok), table={
        (tok.bos_token_id, the): {cat: math.exp(-0.7)},
        (tok.bos_token_id, the, cat): {sat: math.exp(-0.4)}})
    return Scorer(lm, tok)


def test_hand_computed_two_tokens(fake_scorer):
    e = fake_scorer.explain("the", " cat sat", top_k=2)
    assert [r.token for r in e.rows] == ["␣cat", "␣sat"]
    assert [r.logprob for r in e.rows] == pytest.approx([-0.7, -0.4])
    assert [r.cumulative for r in e.rows] == pytest.approx([-0.7, -1.1])
    assert e.logprob == pytest.approx(-1.1) and e.rows[-1].cumulative == e.logprob
    assert [r.prob for r in e.rows] == pytest.approx([0.496585, 0.670320], abs=1e-6)
    assert [r.rank for r in e.rows] == [1, 1]
    # entropy of (p, then 7 tokens sharing 1 - p equally), p = e^-0.7
    p = math.exp(-0.7)
    q = (1 - p) / 7
    assert e.rows[0].entropy == pytest.approx(-(p * math.log(p) + 7 * q * math.log(q)))
    assert e.rows[0].top[0].token == "␣cat" and e.rows[0].top[0].logprob == pytest.approx(-0.7)
    assert len(e.rows[0].top) == 2 and e.rows[0].top[1].prob == pytest.approx(q)
    assert e.text == " cat sat"


def test_json_object(fake_scorer):
    d = json.loads(json.dumps(fake_scorer.explain("the", " cat sat").to_dict()))
    assert d["logprob"] == pytest.approx(-1.1)
    assert [t["token"] for t in d["tokens"]] == ["␣cat", "␣sat"]
    assert set(d["tokens"][0]) >= {"token", "logprob", "cumulative", "rank", "entropy", "top"}
    assert d["tokens"][1]["cumulative"] == d["logprob"]
    assert d["tokens"][0]["top"][0] == {"token": "␣cat", "logprob": pytest.approx(-0.7),
                                        "prob": pytest.approx(math.exp(-0.7))}


def test_token_text_made_visible():
    assert token_bytes("<0x0A>") == b"\n"
    assert token_bytes("▁the") == b" the"
    assert token_bytes("Ġthe", byte_level=True) == b" the"
    assert token_bytes("Ċ") == b"\n"                 # guessed byte-level: Ġ-range character
    assert token_bytes("<s>") == b"<s>"
    assert visible(b" a\tb\r\n") == "␣a→b␍↵"
    assert visible("东".encode()[:2]) == "<0xE4><0xB8>"
    assert visible(b"\x00") == "<0x00>"


def _reference_terms(model, scorer, prompt, response):
    import torch

    from loglik.logprobs import reference_logprobs

    enc = scorer.encode(prompt, response)
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
    with torch.no_grad():
        logits = model(ids).logits                                   # (1, T, V)
    lp = reference_logprobs(logits, ids)[0]                          # (T-1,)
    start = len(enc.context_ids) - 1
    pos = range(start, start + len(enc.response_ids))
    logp = torch.log_softmax(logits[0].double(), -1)                 # (T, V)
    ranks = [int((logp[t] > logp[t, ids[0, t + 1]]).sum()) + 1 for t in pos]
    ents = [float(-(logp[t].exp() * logp[t]).sum()) for t in pos]
    return lp[start:start + len(enc.response_ids)].tolist(), ranks, ents, logp, list(pos)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_rows_equal_the_float64_reference(which, request):
    model = request.getfixturevalue(f"tiny_{which}")
    scorer = request.getfixturevalue(f"{which}_scorer")
    prompt, response = "The capital of France is ", "Paris.\n东京 🍕"
    e = scorer.explain(prompt, response, top_k=3)
    lps, ranks, ents, logp, pos = _reference_terms(model, scorer, prompt, response)
    assert [r.logprob for r in e.rows] == pytest.approx(lps, abs=1e-5)
    assert [r.rank for r in e.rows] == ranks
    assert [r.entropy for r in e.rows] == pytest.approx(ents, abs=1e-4)
    running = 0.0
    for r, lp in zip(e.rows, lps):
        running += lp
        assert r.cumulative == pytest.approx(running, abs=1e-4)
    assert e.rows[-1].cumulative == e.logprob
    best = logp[pos[0]].topk(3).values.tolist()
    assert [a.logprob for a in e.rows[0].top] == pytest.approx(best, abs=1e-5)
    # the tokens' bytes rebuild the scored text (whitespace moved to the response)
    assert e.text == " Paris.\n东京 🍕"
    assert "".join(r.token for r in e.rows).startswith("␣")


def test_partial_characters_show_their_bytes(gpt2_scorer):
    e = gpt2_scorer.explain("Hello", " 東")        # not in the corpus: byte tokens
    assert e.text == " 東"
    assert any(r.token.startswith("<0x") for r in e.rows), [r.token for r in e.rows]


def test_from_score_without_details(gpt2_scorer, bpe_tokenizer):
    s = gpt2_scorer.score("The dog", " sleeps.")
    e = from_score(s, bpe_tokenizer)
    assert [r.rank for r in e.rows] == [None] * s.num_tokens and e.rows[0].top == []
    assert e.logprob == s.logprob and e.text == " sleeps."


def test_cli_json_and_table(tiny_model_dir, tmp_path):
    import contextlib
    import io

    from loglik.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["explain", "The capital of France is", " Paris.", "--model", tiny_model_dir,
                   "--json", "--top-k", "2"])
    assert rc == 0
    d = json.loads(buf.getvalue())
    assert d["tokens"] and d["tokens"][-1]["cumulative"] == d["logprob"]
    assert all(len(t["top"]) == 2 for t in d["tokens"])
    expected = Scorer.from_pretrained(tiny_model_dir).score("The capital of France is",
                                                           " Paris.").logprob
    assert d["logprob"] == pytest.approx(expected, abs=1e-9)

    html = tmp_path / "e.html"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["explain", "The capital of France is", " Paris.", "--model", tiny_model_dir,
                   "--html", str(html)])
    out = buf.getvalue()
    assert rc == 0 and "cumulative" in out and f"{d['logprob']:.4f}" in out
    assert html.read_text(encoding="utf-8").count('class="t ') == len(d["tokens"])
