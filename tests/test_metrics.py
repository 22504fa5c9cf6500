"""Normalisations, corpus perplexity and per-word log-probs (Pimentel & Meister 2024)."""

from __future__ import annotations

import math

import pytest
import torch

from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.errors import ConfigError
from loglik.logprobs import reference_logprobs
from loglik.metrics import (CorpusStats, bits_per_byte, corpus_stats, perplexity, space_marker,
                            word_initial_ids, word_logprobs)
from loglik.types import Score


def _score(logprob: float, tokens: int, nbytes: int, chars: int) -> Score:
    return Score(logprob=logprob, token_ids=[0] * tokens, tokens=[""] * tokens,
                 token_logprobs=[logprob / tokens] * tokens, token_greedy=[False] * tokens,
                 num_tokens=tokens, num_bytes=nbytes, num_chars=chars, boundary="joint")


# -- normalisations ------------------------------------------------------------------------
def test_perplexity_and_bits_literal():
    assert perplexity(-2 * math.log(4), 2) == pytest.approx(4.0)
    assert bits_per_byte(-8 * math.log(2), 4) == pytest.approx(2.0)
    assert math.isnan(perplexity(0.0, 0)) and math.isnan(bits_per_byte(0.0, 0))


def test_corpus_stats_pools_totals_not_means():
    # text 1: -2 nats over 2 tokens, 4 bytes ("abcd"); text 2: -6 nats, 3 tokens, 8 bytes, 6 chars
    stats = corpus_stats([_score(-2.0, 2, 4, 4), _score(-6.0, 3, 8, 6)])
    assert stats == CorpusStats(-8.0, 2, 5, 12, 10)
    assert stats.logprob_per_example == -4.0        # per example; per token below
    assert stats.logprob_per_token == pytest.approx(-1.6)
    assert stats.logprob_per_byte == pytest.approx(-8 / 12)
    assert stats.logprob_per_char == pytest.approx(-0.8)
    assert stats.perplexity == pytest.approx(math.exp(1.6))
    # the mean of per-text perplexities is a different (wrong) number
    assert stats.perplexity != pytest.approx((math.exp(1.0) + math.exp(2.0)) / 2)
    assert stats.bits_per_byte == pytest.approx(8 / math.log(2) / 12)
    d = stats.to_dict()
    assert d["total_logprob"] == -8.0 and d["perplexity"] == pytest.approx(math.exp(1.6))


def test_corpus_stats_of_real_scores(llama_scorer):
    pairs = [("The capital of France is", " Paris."), ("东京是", "日本的首都。"), ("a", "")]
    scores = llama_scorer.score_many(pairs)
    stats = corpus_stats(scores)
    assert stats.total_logprob == pytest.approx(sum(math.fsum(s.token_logprobs) for s in scores))
    assert stats.num_tokens == sum(len(s.token_ids) for s in scores)
    # bytes are UTF-8 bytes of the scored text: CJK characters are 3 bytes each
    assert stats.num_bytes == len(" Paris.".encode()) + len("日本的首都。".encode()) == 7 + 18
    assert stats.num_chars == 7 + 6
    assert stats.perplexity == pytest.approx(math.exp(-stats.total_logprob / stats.num_tokens))


# -- the word-beginning marker -------------------------------------------------------------
def test_space_marker_comes_from_the_tokenizer(bpe_tokenizer, sp_tokenizer, nobos_tokenizer):
    assert space_marker(bpe_tokenizer) == "Ġ"
    assert space_marker(sp_tokenizer) == "▁"
    assert space_marker(nobos_tokenizer) == "Ġ"
    assert space_marker(WordTokenizer(["the", "cat"])) == " "


class _EndOfWordTokenizer(WordTokenizer):
    """Marks word *ends* ("a</w>"): there is no word-beginning marker to find."""

    def convert_ids_to_tokens(self, ids):
        return [self.vocab[i].strip() + "</w>" for i in ids]


def test_space_marker_missing_is_an_error():
    with pytest.raises(ConfigError, match="word-beginning marker"):
        space_marker(_EndOfWordTokenizer(["a", "b"]))


def test_word_initial_ids(bpe_tokenizer, sp_tokenizer):
    mask = word_initial_ids(bpe_tokenizer)
    vocab = bpe_tokenizer.get_vocab()
    assert mask[vocab["Ġthe"]] and mask[vocab["Ċ"]]            # a space word, a newline
    assert not mask[vocab["e"]]
    assert mask[bpe_tokenizer.eos_token_id]                       # EOS ends the last word
    sp_mask = word_initial_ids(sp_tokenizer, vocab_size=len(sp_tokenizer) + 3)
    sp_vocab = sp_tokenizer.get_vocab()
    assert len(sp_mask) == len(sp_tokenizer) + 3 and not any(sp_mask[-3:])
    assert sp_mask[sp_vocab["▁The"]] and not sp_mask[sp_vocab["<s>"]]
    assert sp_mask[sp_vocab["</s>"]] and sp_mask[sp_vocab["<0x0A>"]]
    assert sp_mask[sp_vocab["\t"]] and sp_mask[sp_vocab["\n"]]       # whitespace, no marker
    marked = [i for t, i in sp_vocab.items() if t.startswith("▁")]
    assert all(sp_mask[i] for i in marked)
    letters = [i for t, i in sp_vocab.items() if t[:1].isalpha()]
    assert letters and not any(sp_mask[i] for i in letters)


# -- per-word log-probs --------------------------------------------------------------------
class _PieceTokenizer(WordTokenizer):
    """WordTokenizer that splits unknown words greedily into known pieces (" catsat")."""

    def encode_batch(self, texts):
        out = []
        for text in texts:
            ids, i = [], 0
            while i < len(text):
                piece = max((t for t in self.vocab[2:] if text.startswith(t, i)), key=len)
                ids.append(self.index[piece])
                i += len(piece)
            out.append(ids)
        return out


def _hand_model():
    tok = _PieceTokenizer(["the", "cat", "sat"])
    # ids: 0 <s>, 1 </s>, 2 the, 3 " the", 4 cat, 5 " cat", 6 sat, 7 " sat"
    # word-initial (B): 1, 3, 5, 7
    lm = FakeBackend(len(tok), {
        (0, 2): {5: 0.5, 7: 0.1, 1: 0.1, 3: 0.1},       # B = 0.8
        (0, 2, 5): {7: 0.4, 6: 0.3, 1: 0.1},            # B = 0.4 + 0.1 + 2 x 0.04 = 0.58
        (0, 2, 5, 7): {1: 0.6, 6: 0.2},                 # B = 0.6 + 3 x 0.2/6 = 0.7
    })
    return tok, lm


def test_word_probability_hand_worked():
    """"the" + " cat sat": p(" cat") = 0.5 · 0.58 / 0.8 and p(" sat") = 0.4 · 0.7 / 0.58."""
    tok, lm = _hand_model()
    (cat, sat), = word_logprobs(Scorer(lm, tok), [("the", " cat sat")])
    assert (cat.text, cat.token_start, cat.token_end) == (" cat", 0, 1)
    assert (sat.text, sat.token_start, sat.token_end) == (" sat", 1, 2)
    assert cat.logprob_uncorrected == pytest.approx(math.log(0.5), abs=1e-12)
    assert sat.logprob_uncorrected == pytest.approx(math.log(0.4), abs=1e-12)
    assert cat.logprob == pytest.approx(math.log(0.5 * 0.58 / 0.8), abs=1e-12)   # -1.01473
    assert sat.logprob == pytest.approx(math.log(0.4 * 0.7 / 0.58), abs=1e-12)   # -0.72824
    assert math.exp(cat.logprob) == pytest.approx(0.3625)
    assert cat.bow_logprob_before == pytest.approx(math.log(0.8))
    assert cat.bow_logprob_after == sat.bow_logprob_before == pytest.approx(math.log(0.58))


def test_word_spanning_tokens_and_eos():
    """"the" + " cat" + "sat" is one word " catsat"; a scored EOS belongs to no word."""
    tok, lm = _hand_model()
    scorer = Scorer(lm, tok, score_eos=True)
    (word,), = word_logprobs(scorer, [("the", " catsat")])
    assert (word.text, word.token_start, word.token_end) == (" catsat", 0, 2)
    # p(" cat") p("sat" | " cat") B(after "sat") / B(before " cat"); unlisted contexts uniform
    assert word.logprob == pytest.approx(math.log(0.5 * 0.3 * (4 / 8) / 0.8), abs=1e-12)


def _reference_bow(model, ids, positions, mask):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()        # (T, V)
    logp = torch.log_softmax(logits, -1)[positions]                    # (n, V)
    return torch.logsumexp(logp[:, torch.tensor(mask)], -1)           # (n,)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_words_match_reference_and_telescope(which, llama_scorer, gpt2_scorer, tiny_llama,
                                             tiny_gpt2):
    scorer, model = (llama_scorer, tiny_llama) if which == "llama" else (gpt2_scorer, tiny_gpt2)
    prompt, response = "The capital of France is", " Paris. The dog\nsleeps."
    words = word_logprobs(scorer, [(prompt, response)])[0]
    score = scorer.score(prompt, response)
    assert "".join(w.text for w in words) == response
    assert [w.text.strip() for w in words] == ["Paris.", "The", "dog", "sleeps."]
    assert math.fsum(w.logprob_uncorrected for w in words) == pytest.approx(score.logprob,
                                                                            abs=1e-4)
    # Σ corrected = logprob + log B(end) - log B(start)
    total = math.fsum(w.logprob for w in words)
    assert total == pytest.approx(score.logprob + words[-1].bow_logprob_after
                                  - words[0].bow_logprob_before, abs=1e-4)
    # B against a float64 full forward
    enc = scorer.encode(prompt, response)
    ids = list(enc.context_ids) + list(enc.response_ids)
    starts = [w.token_start for w in words] + [len(enc.response_ids)]
    positions = [len(enc.context_ids) - 1 + s for s in starts]
    ref = _reference_bow(model, ids, positions,
                         word_initial_ids(scorer.tokenizer, scorer.backend.vocab_size))
    got = [w.bow_logprob_before for w in words] + [words[-1].bow_logprob_after]
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), ref, atol=1e-4, rtol=0)
    ref_tok = reference_logprobs(model(torch.tensor([ids])).logits.detach(),
                                 torch.tensor([ids]))[0, len(enc.context_ids) - 1:]
    assert words[0].logprob_uncorrected == pytest.approx(
        ref_tok[:words[0].token_end].sum().item(), abs=1e-4)


def test_words_of_many_examples_and_empty_response(llama_scorer):
    out = word_logprobs(llama_scorer, [("Hi", " there you"), ("Hi", ""), ("The dog", " sleeps")])
    assert [len(w) for w in out] == [2, 0, 1]
    one = word_logprobs(llama_scorer, [("The dog", " sleeps")])[0]
    assert out[2][0].logprob == pytest.approx(one[0].logprob, abs=1e-5)   # batch invariance


def test_words_need_full_distributions(sp_tokenizer):
    class NoDistributions:
        vocab_size, max_length = len(sp_tokenizer), None

        def score(self, requests, detail=None):
            raise AssertionError("not reached")

    with pytest.raises(ConfigError, match="full next-token distributions"):
        word_logprobs(Scorer(NoDistributions(), sp_tokenizer), [("a", " b")])
