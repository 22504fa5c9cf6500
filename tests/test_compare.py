"""loglik.compare: per-model totals, paired bootstrap, win rates, token-level KL; the CLI."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

import loglik
from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.cli import main
from loglik.comparison import bootstrap_sums, compare, percentile_interval
from loglik.distributions import position_stats
from loglik.errors import ConfigError
from loglik.metrics import corpus_stats
from loglik.types import Request


# -- the bootstrap against brute force -------------------------------------------------------
def _enumerated(d):
    """Every resample of d (n^n index tuples, equally likely) and its sum."""
    n = len(d)
    return np.array([sum(d[i] for i in t) for t in itertools.product(range(n), repeat=n)])


def test_bootstrap_matches_enumeration():
    d = [1.0, -2.0, 0.5, 4.0]
    exact = _enumerated(d)                                   # 256 equally likely resamples
    boot = bootstrap_sums(d, num_samples=200_000, seed=0)
    values, counts = np.unique(exact, return_counts=True)
    for v, c in zip(values, counts):                         # every atom within 5 sigma
        p = c / len(exact)
        freq = np.mean(boot == v)
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / len(boot)) + 1e-12
    assert set(np.unique(boot)) <= set(values)
    # the percentile interval of the sample is the exact interval of the enumeration
    assert percentile_interval(exact, 0.95) == (-5.0, 12.5)
    assert percentile_interval(boot, 0.95) == (-5.0, 12.5)
    assert percentile_interval(boot, 0.80) == percentile_interval(exact, 0.80) == (-2.5, 9.5)
    assert boot.mean() == pytest.approx(sum(d), abs=0.05)


def test_bootstrap_is_seeded():
    d = np.linspace(-1, 2, 7)
    a, b = bootstrap_sums(d, num_samples=500, seed=3), bootstrap_sums(d, num_samples=500, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, bootstrap_sums(d, num_samples=500, seed=4))
    # blocks of resamples give the same numbers as one block would
    big = bootstrap_sums(np.ones(3), num_samples=10)
    assert np.array_equal(big, np.full(10, 3.0))
    with pytest.raises(ConfigError, match="confidence"):
        percentile_interval(a, 1.5)


# -- compare on hand-computable fake models --------------------------------------------------
def _fake_models():
    tok = WordTokenizer(["the", "cat", "sat", "dog"])
    # ids: 0 <s> 1 </s> 2 the 3 " the" 4 cat 5 " cat" 6 sat 7 " sat" 8 dog 9 " dog"
    a = FakeBackend(len(tok), {(0, 2): {5: 0.5, 9: 0.25}, (0, 2, 5): {7: 0.5}})
    b = FakeBackend(len(tok), {(0, 2): {5: 0.25, 9: 0.5}, (0, 2, 5): {7: 0.5}})
    return tok, Scorer(a, tok), Scorer(b, tok)


EXAMPLES = [("the", " cat"), ("the", " dog"), ("the", " cat sat"), ("the", " sat")]


def test_compare_fake_models_literal():
    tok, a, b = _fake_models()
    c = compare({"a": a, "b": b}, EXAMPLES, num_bootstrap=2000, top=2)
    la = [math.log(0.5), math.log(0.25), math.log(0.25), math.log(0.25 / 8)]
    lb = [math.log(0.25), math.log(0.5), math.log(0.125), math.log(0.25 / 8)]
    assert [s.logprob for s in c.scores[0]] == pytest.approx(la)
    assert [s.logprob for s in c.scores[1]] == pytest.approx(lb)
    p = c.pair("a", "b")
    d = np.array(la) - np.array(lb)                    # [ln2, -ln2, ln2, 0]
    assert p.diff_total == pytest.approx(math.log(2))
    assert p.diff_mean == pytest.approx(math.log(2) / 4)
    assert (p.win_rate_a, p.win_rate_b, p.tie_rate) == (0.5, 0.25, 0.25)
    assert p.basis == "tokens"
    assert [e["index"] for e in p.largest] == [0, 1]     # |ln 2| ties keep input order
    assert p.largest[1]["diff"] == pytest.approx(-math.log(2))
    nbytes = sum(len(r.encode()) for _, r in EXAMPLES)
    assert p.diff_per_byte == pytest.approx(math.log(2) / nbytes)
    # the interval is the bootstrap of exactly these differences
    lo, hi = percentile_interval(bootstrap_sums(d, num_samples=2000, seed=0), 0.95)
    assert (p.ci_low, p.ci_high) == pytest.approx((lo, hi))
    m = c.models[0]
    assert (m.name, m.stats.num_examples, m.stats.num_tokens) == ("a", 4, 5)
    assert m.stats.total_logprob == pytest.approx(sum(la))


def test_token_stats_fake_direct():
    tok, a, b = _fake_models()
    c = compare([a, b], EXAMPLES, num_bootstrap=100)
    st = c.pair("model1", "model2").token_stats
    rows = []   # (kl, same top-1, p_a, p_b) per response token, computed directly
    for prompt, response in EXAMPLES:
        enc = a.encode(prompt, response)
        ctx = list(enc.context_ids)
        for t in enc.response_ids:
            pa, pb = a.backend.distribution(ctx), b.backend.distribution(ctx)
            kl = sum(x * math.log(x / y) for x, y in zip(pa, pb) if x > 0)
            same = max(range(len(pa)), key=pa.__getitem__) == max(range(len(pb)),
                                                                   key=pb.__getitem__)
            rows.append((kl, same, pa[t], pb[t]))
            ctx.append(t)
    kl = np.array([r[0] for r in rows])
    dp = np.array([r[2] - r[3] for r in rows])
    assert st["num_tokens"] == len(rows) == 5
    assert st["kl_mean"] == pytest.approx(kl.mean(), abs=1e-12)
    assert st["kl_max"] == pytest.approx(kl.max(), abs=1e-12)
    assert st["kl_p50"] == pytest.approx(np.percentile(kl, 50), abs=1e-12)
    assert st["same_top1_rate"] == pytest.approx(np.mean([r[1] for r in rows]))
    assert st["true_prob_diff_mean"] == pytest.approx(dp.mean(), abs=1e-12)
    assert st["true_prob_diff_rms"] == pytest.approx(np.sqrt((dp ** 2).mean()), abs=1e-12)
    # KL at the first position, by hand: 0.5 ln 2 + 0.25 ln 0.5 (the rest is equal)
    assert kl[0] == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(0.5))


def test_compare_errors():
    tok, a, b = _fake_models()
    with pytest.raises(ConfigError, match="at least one model"):
        compare([], EXAMPLES)
    alone = compare([a], EXAMPLES, names=["a"])           # one model: its figures, no pairs
    assert alone.pairs == [] and alone.models[0].stats.num_tokens == 5
    with pytest.raises(ConfigError, match="at least one example"):
        compare([a, b], [])
    with pytest.raises(ConfigError, match="one distinct name"):
        compare([a, b], EXAMPLES, names=["x", "x"])


# -- real (tiny) models ----------------------------------------------------------------------
PAIRS = [("The capital of France is", " Paris."), ("Question: what is the answer?", " forty-two"),
         ("The quick brown fox", " jumps over the lazy dog."), ("东京是", "日本的首都。"),
         ("def add(a, b):", "\n    return a + b")]


@pytest.fixture(scope="module")
def llama_b(sp_tokenizer, torch_threads):
    from loglik.testing import tiny_model

    return Scorer.from_hf(tiny_model("llama", len(sp_tokenizer), seed=1, scale=10.0),
                          sp_tokenizer, batch_tokens=64)


def test_compare_tiny_models_match_direct(llama_scorer, llama_b, gpt2_scorer):
    c = loglik.compare({"A": llama_scorer, "B": llama_b, "G": gpt2_scorer}, PAIRS,
                       num_bootstrap=1000)
    assert c.names == ["A", "B", "G"]
    direct = [s.score_many(PAIRS) for s in (llama_scorer, llama_b, gpt2_scorer)]
    for m, scores, ds in zip(c.models, c.scores, direct):
        assert [s.logprob for s in scores] == pytest.approx([s.logprob for s in ds], abs=1e-4)
        assert m.stats.to_dict() == pytest.approx(corpus_stats(ds).to_dict(), abs=1e-4)
        assert m.top1_rate == np.mean([g for s in ds for g in s.token_greedy])
    assert [m.tokenizer_group for m in c.models] == [0, 0, 1]
    ab, ag = c.pair("A", "B"), c.pair("A", "G")
    assert (ab.basis, ag.basis) == ("tokens", "text")
    assert ag.token_stats is None and ab.token_stats is not None
    # same text under both tokenizers: same bytes and characters
    assert c.models[0].stats.num_bytes == c.models[2].stats.num_bytes
    assert c.models[0].stats.num_tokens != c.models[2].stats.num_tokens
    d = np.array([x.logprob - y.logprob for x, y in zip(direct[0], direct[2])])
    assert ag.diff_total == pytest.approx(d.sum(), abs=1e-3)
    assert ag.win_rate_a == np.mean(d > 0)
    assert ag.ci_low <= ag.diff_total <= ag.ci_high


def test_token_stats_match_float64_reference(llama_scorer, llama_b, tiny_llama):
    c = compare([llama_scorer, llama_b], PAIRS, num_bootstrap=10)
    st = c.pairs[0].token_stats
    model_b = llama_b.backend.model
    kls, same, dps = [], [], []
    for prompt, response in PAIRS:
        enc = llama_scorer.encode(prompt, response)
        ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
        pos = slice(len(enc.context_ids) - 1, ids.shape[1] - 1)
        with torch.no_grad():
            la = torch.log_softmax(tiny_llama(ids).logits[0, pos].double(), -1)  # (n, V)
            lb = torch.log_softmax(model_b(ids).logits[0, pos].double(), -1)
        tgt = torch.tensor(enc.response_ids)
        kls += (la.exp() * (la - lb)).sum(-1).tolist()
        same += (la.argmax(-1) == lb.argmax(-1)).tolist()
        dps += (la.exp() - lb.exp()).gather(-1, tgt[:, None])[:, 0].tolist()
    assert st["num_tokens"] == len(kls)
    assert st["kl_mean"] == pytest.approx(np.mean(kls), abs=1e-4)
    assert st["kl_max"] == pytest.approx(np.max(kls), abs=1e-4)
    assert st["kl_p90"] == pytest.approx(np.percentile(kls, 90), abs=1e-4)
    assert st["same_top1_rate"] == pytest.approx(np.mean(same))
    assert st["true_prob_diff_mean"] == pytest.approx(np.mean(dps), abs=1e-5)


def test_position_stats_chunking_is_invisible(llama_scorer, tiny_llama):
    """Full log-softmax rows, in tiny batches and 3-row chunks, equal one full forward."""
    encs = [llama_scorer.encode(p, r) for p, r in PAIRS]
    reqs = [Request(e.context_ids, e.response_ids) for e in encs]
    rows = position_stats([llama_scorer.backend], reqs, lambda lps, t: lps[0],
                          batch_tokens=16, chunk_rows=3, final=True)
    for e, got in zip(encs, rows):
        ids = torch.tensor([list(e.context_ids) + list(e.response_ids)])
        with torch.no_grad():
            ref = torch.log_softmax(tiny_llama(ids).logits[0].double(), -1)   # (T, V)
        n = len(e.response_ids)
        assert got.shape == (n + 1, ref.shape[-1])
        torch.testing.assert_close(got, ref[len(e.context_ids) - 1:], atol=1e-4, rtol=0)


def test_json_interface(llama_scorer, gpt2_scorer):
    c = compare({"A": llama_scorer, "G": gpt2_scorer}, PAIRS, num_bootstrap=200)
    out = json.loads(json.dumps(c.to_dict()))
    assert [m["name"] for m in out["models"]] == ["A", "G"]
    for m in out["models"]:
        assert {"name", "total_logprob", "num_examples", "num_tokens", "num_bytes",
                "perplexity", "bits_per_byte", "logprob_per_byte"} <= set(m)
    (p,) = out["pairs"]
    assert {"a", "b", "diff_total", "ci_low", "ci_high", "win_rate_a"} <= set(p)
    assert (p["a"], p["b"]) == ("A", "G")
    assert p["diff_total"] == pytest.approx(out["models"][0]["total_logprob"]
                                            - out["models"][1]["total_logprob"])


# -- the command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cmp") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": f"ex{i}", "prompt": p, "response": r}) + "\n"
                            for i, (p, r) in enumerate(PAIRS)), encoding="utf-8")
    return str(path)


def test_cli_compare_json(pairs_file, tiny_model_dir, tiny_gpt2_dir, capsys):
    rc = main(["compare", pairs_file, "--model", tiny_model_dir, "--model", tiny_gpt2_dir,
               "--name", "llama", "--name", "gpt2", "--json", "--num-bootstrap", "300"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in out["models"]] == ["llama", "gpt2"]
    assert out["models"][0]["num_examples"] == len(PAIRS)
    p = out["pairs"][0]
    assert (p["a"], p["b"], p["basis"]) == ("llama", "gpt2", "text")
    assert p["largest"][0]["id"].startswith("ex")


def test_cli_compare_table_and_plot(pairs_file, tiny_model_dir, tmp_path, capsys):
    plot = tmp_path / "cmp.png"
    rc = main(["compare", pairs_file, "--model", tiny_model_dir, "--model", tiny_model_dir,
               "--name", "one", "--name", "two", "--plot", str(plot), "--detail",
               "--num-bootstrap", "200"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "paired differences" in text and "one − two" in text and "KL mean" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_token_end_offsets(sp_tokenizer, bpe_tokenizer):
    from loglik.render.plots import token_end_offsets

    for tok in (sp_tokenizer, bpe_tokenizer):
        text = " Paris. The dog"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        ends = token_end_offsets(tok, ids, text)
        assert len(ends) == len(ids) and ends[-1] == len(text)
        assert ends == sorted(ends) and ends[0] > 0
    assert token_end_offsets(sp_tokenizer, [], "") == []


def test_cli_score_detail_adds_rank_and_entropy(pairs_file, tiny_model_dir, capsys):
    assert main(["score", pairs_file, "--model", tiny_model_dir, "--detail"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(rec["token_ranks"]) == len(rec["token_entropies"]) == rec["num_tokens"]
