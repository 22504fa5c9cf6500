"""``loglik score --words`` and ``iter_scores_with_words``: per-word records, nats or bits."""

import json
import math

import pytest

from loglik import Scorer
from loglik.cli import main
from loglik.metrics import LN2, iter_scores_with_words, word_logprobs

from .test_metrics import _hand_model


def test_word_records_hand_worked():
    """"the" + " cat sat": p(" cat") = 0.5 · 0.58 / 0.8, p(" sat") = 0.4 · 0.7 / 0.58."""
    tok, lm = _hand_model()
    [score] = iter_scores_with_words(Scorer(lm, tok), [("the", " cat sat")])
    assert score.extra["words"] == [
        {"text": " cat", "logprob": pytest.approx(math.log(0.3625), abs=1e-12),
         "logprob_uncorrected": pytest.approx(math.log(0.5), abs=1e-12), "num_tokens": 1},
        {"text": " sat", "logprob": pytest.approx(math.log(0.4 * 0.7 / 0.58), abs=1e-12),
         "logprob_uncorrected": pytest.approx(math.log(0.4), abs=1e-12), "num_tokens": 1}]
    [bits] = iter_scores_with_words(Scorer(lm, tok), [("the", " cat sat")], bits=True)
    assert bits.extra["words"][0]["logprob_bits"] == pytest.approx(math.log2(0.3625))
    assert set(bits.extra["words"][0]) == {"text", "logprob_bits", "logprob_uncorrected_bits",
                                            "num_tokens"}


def test_cli_words(tmp_path, tiny_model_dir):
    rows = [{"id": 1, "prompt": "The capital of France is", "response": " Paris. The dog sleeps"},
            {"id": 2, "prompt": "She said:", "response": " \"Hello, world!\""}]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, out_bits = tmp_path / "w.jsonl", tmp_path / "b.jsonl"
    assert main(["score", str(data), "--model", tiny_model_dir, "-o", str(out), "--words"]) == 0
    assert main(["score", str(data), "--model", tiny_model_dir, "-o", str(out_bits), "--words",
                 "--bits"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    recs_bits = [json.loads(line) for line in out_bits.read_text().splitlines()]
    scorer = Scorer.from_pretrained(tiny_model_dir)
    expected = word_logprobs(scorer, [(r["prompt"], r["response"]) for r in rows])
    for rec, rec_bits, words, row in zip(recs, recs_bits, expected, rows):
        got = rec["words"]
        assert "".join(w["text"] for w in got) == row["response"]
        assert [w["text"] for w in got] == [w.text for w in words]
        for g, w in zip(got, words):
            assert g["logprob"] == pytest.approx(w.logprob, abs=1e-4)
        # minicons-style: the uncorrected word sums are the token log-probs, summed per word
        start = 0
        for g in got:
            span = rec["token_logprobs"][start:start + g["num_tokens"]]
            assert g["logprob_uncorrected"] == pytest.approx(math.fsum(span), abs=1e-4)
            start += g["num_tokens"]
        assert start == rec["num_tokens"]
        for g, b in zip(got, rec_bits["words"]):
            assert b["logprob_bits"] == pytest.approx(g["logprob"] / LN2, abs=1e-9)
