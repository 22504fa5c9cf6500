"""Long texts by strided windows: token accounting, float64 reference per window, BOS policy,
corpus perplexity / bits per byte, `loglik score --text-field`, and left truncation of prompts."""

import json
import math

import pytest
import torch

from loglik import Scorer
from loglik.cli import main
from loglik.errors import ConfigError, ContextLengthError
from loglik.logprobs import reference_logprobs
from loglik.longtext import corpus_perplexity, iter_text_scores, window_requests
from loglik.metrics import CorpusTotals

TEXT = ("The quick brown fox jumps over the lazy dog. The capital of France is Paris. "
        "Machine learning models compute probabilities of tokens given a context. ") * 6


def windows(requests):
    return [(list(r.context_ids), list(r.target_ids)) for r in requests]


def test_windows_by_hand():
    ids = list(range(1, 11))             # t_1..t_10 after start token 0
    # L = 4 tokens read per window, stride 3: context of L - S + 1 = 2 tokens
    assert windows(window_requests(ids, start=0, bos=None, max_length=4, stride=3)) == [
        ([0], [1, 2, 3, 4]), ([3, 4], [5, 6, 7]), ([6, 7], [8, 9, 10])]
    # with a BOS policy the first context token of later windows is BOS (99), never scored
    assert windows(window_requests(ids, start=99, bos=99, max_length=4, stride=2)) == [
        ([99], [1, 2, 3, 4]), ([99, 3, 4], [5, 6]), ([99, 5, 6], [7, 8]), ([99, 7, 8], [9, 10])]
    # stride = L: plain chunks; a text that fits: one request; empty: none
    assert windows(window_requests(ids, start=0, bos=None, max_length=5, stride=5)) == [
        ([0], [1, 2, 3, 4, 5]), ([5], [6, 7, 8, 9, 10])]
    assert windows(window_requests(ids, start=0, bos=None, max_length=10)) == [([0], ids)]
    assert window_requests([], start=0, bos=None, max_length=4) == []


@pytest.mark.parametrize("n,length,stride", [(1, 4, 1), (37, 8, 3), (64, 16, 16), (100, 7, 1),
                                             (33, 32, 31), (500, 64, 10)])
def test_every_token_scored_once_and_no_window_too_long(n, length, stride):
    ids = list(range(1, n + 1))
    for bos in (None, 0):
        reqs = window_requests(ids, start=0, bos=bos, max_length=length, stride=stride)
        scored = [t for r in reqs for t in r.target_ids]
        assert scored == ids
        for r in reqs:
            assert len(r.context_ids) + len(r.target_ids) - 1 <= length
            assert len(r.target_ids) <= max(length, stride)
        for r in reqs[1:]:       # as much context as the stride allows
            assert len(r.context_ids) == length - stride + 1


def test_bad_stride_says_the_range():
    with pytest.raises(ConfigError, match="between 1 and the window of 8"):
        window_requests(list(range(20)), start=0, bos=None, max_length=8, stride=9)


def reference_windows(model, requests):
    """The naive equivalent: one float64 full forward per window."""
    out = []
    for r in requests:
        ids = torch.tensor([list(r.context_ids) + list(r.target_ids)])
        with torch.no_grad():
            logits = model(ids).logits                              # (1, T, V)
        ref = reference_logprobs(logits, ids)[0]                    # (T-1,)
        out += ref[-len(r.target_ids):].tolist()
    return out


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_long_text_matches_float64_reference_per_window(which, llama_scorer, gpt2_scorer,
                                                        tiny_llama, tiny_gpt2):
    scorer, model = (llama_scorer, tiny_llama) if which == "llama" else (gpt2_scorer, tiny_gpt2)
    tok = scorer.tokenizer
    ids = tok.encode_batch([TEXT])[0]
    assert len(ids) > 64
    s = scorer.score_text(TEXT, max_length=32, stride=12)
    assert s.token_ids == ids and s.num_tokens == len(ids)            # exact accounting
    assert s.num_bytes == len(TEXT.encode()) and s.num_chars == len(TEXT)
    enc = scorer.encoder
    bos = tok.bos_token_id if enc.add_bos else None
    reqs = window_requests(ids, start=enc.start_token(), bos=bos, max_length=32, stride=12)
    assert s.extra["num_windows"] == len(reqs) == 1 + math.ceil((len(ids) - 32) / 12)
    if which == "llama":          # BOS policy adds <s>: every window starts with it
        assert all(r.context_ids[0] == tok.bos_token_id for r in reqs)
    else:                         # GPT-2 style: the first window conditions on <|endoftext|>
        assert reqs[0].context_ids == (tok.eos_token_id,)
        assert all(r.context_ids[0] != tok.bos_token_id for r in reqs[1:])
    torch.testing.assert_close(torch.tensor(s.token_logprobs, dtype=torch.float64),
                               torch.tensor(reference_windows(model, reqs), dtype=torch.float64),
                               atol=1e-4, rtol=0)
    assert s.logprob == math.fsum(s.token_logprobs)


def test_text_that_fits_is_score_of_empty_prompt(llama_scorer, gpt2_scorer):
    for scorer in (llama_scorer, gpt2_scorer):
        short = "The capital of France is Paris."
        a, b = scorer.score_text(short), scorer.score("", short)
        assert a.token_ids == b.token_ids and a.extra["num_windows"] == 1
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)


def test_text_longer_than_the_context_uses_the_model_context(gpt2_scorer):
    long = TEXT * 3                                    # > 256 positions of the tiny model
    n = len(gpt2_scorer.tokenizer.encode_batch([long])[0])
    assert n > 256
    with pytest.raises(ContextLengthError):
        gpt2_scorer.score("", long)
    s = gpt2_scorer.score_text(long)                   # default stride: half the context
    assert s.num_tokens == n and s.extra["num_windows"] == 1 + math.ceil((n - 256) / 128)
    with pytest.raises(ConfigError, match="longer than the model's context 256"):
        gpt2_scorer.score_text(long, max_length=512)


def test_smaller_stride_is_never_worse_on_repetitive_text(gpt2_scorer):
    """Not a law for any model, but a sanity check: more context can only help a repeated
    text on this model, and the two runs score the same tokens."""
    a = gpt2_scorer.score_text(TEXT, max_length=32, stride=32)
    b = gpt2_scorer.score_text(TEXT, max_length=32, stride=4)
    assert a.token_ids == b.token_ids
    assert b.extra["num_windows"] > a.extra["num_windows"]
    assert a.token_logprobs[:32] == pytest.approx(b.token_logprobs[:32], abs=1e-5)


def test_corpus_perplexity_and_bits_per_byte(gpt2_scorer):
    docs = [TEXT, "Hello world", "", TEXT[:100]]
    scores = list(iter_text_scores(gpt2_scorer, docs, max_length=40, stride=20))
    assert [s.num_tokens for s in scores][2] == 0 and scores[2].logprob == 0.0
    stats = corpus_perplexity(gpt2_scorer, docs, max_length=40, stride=20)
    total = math.fsum(s.logprob for s in scores)
    tokens = sum(s.num_tokens for s in scores)
    nbytes = sum(len(d.encode()) for d in docs)
    assert stats.total_logprob == total and stats.num_tokens == tokens
    assert stats.perplexity == pytest.approx(math.exp(-total / tokens))
    assert stats.bits_per_byte == pytest.approx(-total / math.log(2) / nbytes)
    totals = CorpusTotals()
    for s in scores:
        totals.add(s.to_record())
    assert totals.stats().perplexity == pytest.approx(stats.perplexity)


def test_cli_text_field_jsonl_and_parquet(tmp_path, tiny_gpt2_dir, gpt2_scorer, capsys):
    docs = [{"id": f"d{i}", "text": TEXT * (i + 1)} for i in range(3)]
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    out = tmp_path / "docs.parquet"
    assert main(["score", str(data), "--model", tiny_gpt2_dir, "--text-field", "text",
                 "--stride", "100", "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    import pyarrow.parquet as pq

    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == ["d0", "d1", "d2"]
    for d, r in zip(docs, rows):
        s = gpt2_scorer.score_text(d["text"], stride=100)
        assert r["token_ids"] == s.token_ids and r["num_windows"] == s.extra["num_windows"]
        assert r["logprob"] == pytest.approx(s.logprob, abs=1e-4)
    assert summary["num_examples"] == 3
    assert summary["num_tokens"] == sum(r["num_tokens"] for r in rows)
    assert summary["num_bytes"] == sum(len(d["text"].encode()) for d in docs)
    assert summary["perplexity"] == pytest.approx(
        math.exp(-math.fsum(r["logprob"] for r in rows) / summary["num_tokens"]))
    # a missing field names the flag
    assert main(["score", str(data), "--model", tiny_gpt2_dir, "--text-field", "body"]) == 2
    assert "--text-field" in capsys.readouterr().err


def test_left_truncation_keeps_the_last_prompt_tokens(tiny_llama, sp_tokenizer):
    """truncate='left' only when asked; the score equals that of the kept tokens and the
    record says how many were dropped."""
    from loglik.types import Request

    scorer = Scorer.from_hf(tiny_llama, sp_tokenizer, max_length=24, truncate="left")
    prompt, response = TEXT[:200], " Paris is the capital"
    s = scorer.score(prompt, response)
    enc = scorer.encode(prompt, response)
    full = Scorer.from_hf(tiny_llama, sp_tokenizer).encode(prompt, response)
    assert enc.truncated_tokens == s.truncated_tokens > 0
    assert len(enc.context_ids) + len(enc.response_ids) - 1 == 24
    # BOS kept, then the last prompt tokens
    assert enc.context_ids[0] == sp_tokenizer.bos_token_id
    assert list(enc.context_ids[1:]) == list(full.context_ids[1 + enc.truncated_tokens:])
    assert s.to_record()["truncated_tokens"] == enc.truncated_tokens
    direct = scorer.run_requests([Request(enc.context_ids, enc.response_ids)])[0]
    assert s.token_logprobs == pytest.approx(direct.logprobs, abs=1e-6)
    with pytest.raises(ContextLengthError, match="truncate='left'"):
        Scorer.from_hf(tiny_llama, sp_tokenizer, max_length=24).score(prompt, response)


def test_no_indexing_errors_warning_for_a_windowed_text(tiny_llama):
    """loglik windows a long text itself: transformers' "will result in indexing errors"
    warning (logged once per tokenizer, with the length it saw) must not appear."""
    import logging

    from transformers.utils import logging as hf_logging

    from loglik.testing import sentencepiece_tokenizer

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    tok = sentencepiece_tokenizer()                 # fresh: the warning fires once per object
    tok.model_max_length = 32
    scorer = Scorer.from_hf(tiny_llama, tok, max_length=32)
    text = "The capital of France is Paris. The capital of Italy is Rome. " * 6
    before, seen = hf_logging.get_verbosity(), Records()
    hf_logging.set_verbosity_warning()
    hf_logging.get_logger().addHandler(seen)       # the library's root logger "transformers"
    try:
        s = scorer.score_text(text)
        windowed = [m for m in seen.messages if "indexing errors" in m]
        tok(text)                                   # a direct call still warns: nothing global
    finally:
        hf_logging.get_logger().removeHandler(seen)
        hf_logging.set_verbosity(before)
    assert s.extra["num_windows"] > 1
    assert windowed == []
    assert sum("indexing errors" in m for m in seen.messages) == 1
