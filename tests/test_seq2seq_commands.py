"""Encoder-decoder models through every command: distributions (--words, compare's KL),
explain, audit, --text-field, --truncate left. Reference: float64 full forward (test_seq2seq)."""

import json
import math

import pytest
import torch

from loglik import Scorer, compare
from loglik.audit import audit
from loglik.cli import main
from loglik.distributions import position_stats
from loglik.errors import ConfigError, ContextLengthError
from loglik.metrics import word_initial_ids, word_logprobs
from loglik.testing import tiny_seq2seq
from loglik.types import Request

from .test_seq2seq import TOKENIZER, reference

PAIRS = [("The capital of France is", " Paris. The dog\nsleeps."),
         ("Translate: hello", " bonjour le monde"), ("2+2=", "4")]


@pytest.fixture(scope="module", params=["t5", "bart"])
def s2s(request, torch_threads):
    tok = TOKENIZER[request.param]()
    model = tiny_seq2seq(request.param, tok, scale=4.0, seed=2)
    return request.param, tok, model, Scorer.from_seq2seq(model, tok, batch_tokens=128)


def test_distributions_match_the_float64_reference(s2s):
    family, tok, model, scorer = s2s
    encoded = [scorer.encode(p, r) for p, r in PAIRS]
    stats = position_stats([scorer.backend], [Request(e.context_ids, e.response_ids)
                                              for e in encoded],
                           lambda logps, targets: logps[0], batch_tokens=64)
    worst = 0.0
    for e, got in zip(encoded, stats):
        logp, _ = reference(model, e)                                   # (n, V) float64
        worst = max(worst, (got - logp).abs().max().item())
    assert worst < 1e-4


def test_words(s2s):
    family, tok, model, scorer = s2s
    prompt, response = PAIRS[0]
    words = word_logprobs(scorer, [(prompt, response)])[0]
    score = scorer.score(prompt, response)
    assert "".join(w.text for w in words).strip() == response.strip()
    assert [w.text.strip() for w in words] == ["Paris.", "The", "dog", "sleeps."]
    assert math.fsum(w.logprob_uncorrected for w in words) == pytest.approx(score.logprob,
                                                                            abs=1e-4)
    # log B(word start) against the float64 decoder distributions
    enc = scorer.encode(prompt, response)
    logp, _ = reference(model, Scorer.from_seq2seq(model, tok, score_eos=True).encode(
        prompt, response))                                              # (n + 1, V)
    bow = torch.tensor(word_initial_ids(tok, scorer.backend.vocab_size))
    starts = [w.token_start for w in words] + [len(enc.response_ids)]
    ref = torch.logsumexp(logp[starts][:, bow], -1)
    got = [w.bow_logprob_before for w in words] + [words[-1].bow_logprob_after]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), ref, atol=1e-4, rtol=0)


def test_explain_and_compare(s2s):
    family, tok, model, scorer = s2s
    expl = scorer.explain(*PAIRS[1], top_k=3)
    _, ref = reference(model, scorer.encode(*PAIRS[1]))
    assert expl.logprob == pytest.approx(ref.sum().item(), abs=1e-4)
    assert expl.boundary == "seq2seq" and len(expl.rows[0].top) == 3
    other = Scorer.from_seq2seq(tiny_seq2seq(family, tok, scale=4.0, seed=3), tok)
    c = compare({"a": scorer, "b": other}, PAIRS, num_bootstrap=100)
    stats = c.pair("a", "b").token_stats
    # KL(a || b) from the two decoders' float64 distributions, summed over target tokens
    kl = 0.0
    for p, r in PAIRS:
        la, _ = reference(model, scorer.encode(p, r))
        lb, _ = reference(other.backend.model, other.encode(p, r))
        kl += (la.exp() * (la - lb)).sum().item()
    n = sum(len(scorer.encode(p, r).response_ids) for p, r in PAIRS)
    assert stats["num_tokens"] == n
    assert stats["kl_mean"] == pytest.approx(kl / n, abs=1e-4)


def test_audit_runs_the_checks_that_apply(s2s):
    family, tok, model, scorer = s2s
    report = audit(scorer, PAIRS)
    by_name = {c.name: c for c in report.checks}
    assert report.passed, report
    assert by_name["kv_cache"].status == "pass"
    assert "encoder-decoder" in by_name["kv_cache"].summary
    assert by_name["kv_cache"].details["max_abs_diff_sequence"] < 1e-4
    assert "full forward alone" in by_name["invariance"].summary
    assert "packed" in next(iter(by_name["invariance"].details["skipped"]))


def test_lone_text_is_a_clear_error(s2s):
    family, tok, model, scorer = s2s
    with pytest.raises(ConfigError, match="a lone text has no log-probability.*prompt"):
        scorer.score_text("hello world")


def test_truncate_left_cuts_the_encoder_input_only(s2s):
    family, tok, model, _ = s2s
    prompt = "one two three four five six seven eight nine ten eleven"
    full = tok(prompt)["input_ids"]
    limit = len(full) - 5
    strict = Scorer.from_seq2seq(model, tok, max_length=limit)
    with pytest.raises(ContextLengthError, match="encoder reads at most.*--truncate left"):
        strict.score(prompt, " hi")
    cut = Scorer.from_seq2seq(model, tok, max_length=limit, truncate="left")
    enc = cut.encode(prompt, " hi")
    assert len(enc.context_ids) == limit and enc.truncated_tokens == 5
    if family == "bart":   # <s> stays first, the rest is the prompt's right end
        assert enc.context_ids == (full[0], *full[6:])
    else:                  # T5 has no leading special token: the last `limit` ids
        assert list(enc.context_ids) == full[-limit:]
    s = cut.score(prompt, " hi")
    _, ref = reference(model, enc)
    assert s.logprob == pytest.approx(ref.sum().item(), abs=1e-4) and s.truncated_tokens == 5
    with pytest.raises(ContextLengthError, match="decoder reads at most.*never truncated"):
        cut.score("hi", " " + prompt + " " + prompt)


@pytest.mark.slow
def test_cli_commands_on_a_seq2seq_folder(tmp_path, s2s, capsys):
    family, tok, model, scorer = s2s
    folder = tmp_path / family
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in PAIRS))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--model", str(folder), "--words", "-o", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [w["text"].strip() for w in recs[0]["words"]] == ["Paris.", "The", "dog", "sleeps."]
    capsys.readouterr()
    assert main(["explain", *PAIRS[2], "--model", str(folder), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["logprob"] == pytest.approx(recs[2]["logprob"],
                                                                           abs=1e-4)
    assert main(["audit", str(data), "--model", str(folder)]) == 0
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "hello"}) + "\n")
    assert main(["score", str(docs), "--text-field", "text", "--model", str(folder)]) != 0
    assert "no log-probability of its own" in capsys.readouterr().err
