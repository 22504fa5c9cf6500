"""The shipped fake backend: chain rule checked on hand-computed numbers."""

import math

import pytest

from loglik import Example, Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer


@pytest.fixture()
def seed_case():
    tok = WordTokenizer(["the", "cat", "sat", "dog"])
    the, cat, sat = tok.ids("the cat sat")
    bos = tok.bos_token_id
    backend = FakeBackend(len(tok), {
        (bos, the): {cat: math.exp(-0.7), tok.ids(" dog")[0]: 0.25},
        (bos, the, cat): {sat: math.exp(-0.4)},
    })
    return tok, backend


def test_seed_example_minus_0_7_plus_minus_0_4(seed_case):
    tok, backend = seed_case
    s = Scorer(backend, tok).score("the", " cat sat")
    assert s.token_logprobs == pytest.approx([-0.7, -0.4], abs=1e-12)
    assert s.logprob == pytest.approx(-1.1, abs=1e-12)
    assert s.tokens == [" cat", " sat"]
    assert (s.num_tokens, s.num_bytes, s.num_chars, s.boundary) == (2, 8, 8, "joint")
    # the backend saw token ids only: BOS + "the" as context, the two words as targets
    (request,) = backend.calls[-1]
    assert request.context_ids == (tok.bos_token_id, *tok.ids("the"))
    assert request.target_ids == tuple(tok.ids(" cat sat"))


def test_trailing_space_of_prompt_moves_to_response(seed_case):
    tok, backend = seed_case
    s = Scorer(backend, tok).score("the ", "cat sat")
    assert s.logprob == pytest.approx(-1.1, abs=1e-12)
    assert s.num_bytes == len(" cat sat")


def test_greedy_rank_entropy_top(seed_case):
    tok, backend = seed_case
    s = Scorer(backend, tok).score("the", " cat sat", rank=True, entropy=True, top_k=2)
    # exp(-0.7)=0.497 is the most probable after "the"; exp(-0.4)=0.67 after "the cat"
    assert s.token_greedy == [True, True] and s.greedy
    assert s.token_ranks == [1, 1]
    assert s.token_top[0][0] == (" cat", pytest.approx(-0.7))
    assert s.token_top[0][1] == (" dog", pytest.approx(math.log(0.25)))
    p = backend.distribution([tok.bos_token_id, *tok.ids("the")])
    assert s.token_entropies[0] == pytest.approx(-sum(q * math.log(q) for q in p))


def test_empty_response_is_zero(seed_case):
    tok, backend = seed_case
    s = Scorer(backend, tok).score("the", "")
    assert (s.logprob, s.num_tokens, s.token_logprobs, s.boundary) == (0.0, 0, [], "joint")


@pytest.mark.parametrize("whitespace", ["move", "keep"])
def test_empty_response_is_zero_whatever_the_whitespace_policy(whitespace):
    """Moving the prompt's trailing space must not make an empty response a scored space."""
    tok = WordTokenizer(["the", "cat", ""])             # "" adds a lone " " token
    backend = FakeBackend(len(tok), {})                 # uniform: a scored space is -log V
    s = Scorer(backend, tok, whitespace=whitespace).score("the ", "")
    assert (s.logprob, s.num_tokens, s.num_bytes, s.num_chars) == (0.0, 0, 0, 0)
    assert s.token_ids == [] and s.token_logprobs == []


def test_counts_are_of_the_scored_text():
    """num_bytes/num_chars count the text the tokens stand for (after the whitespace move)."""
    tok = WordTokenizer(["the", "cat", "sat", ""])      # "" adds a lone " " token
    backend = FakeBackend(len(tok), {})
    moved = Scorer(backend, tok).score("the ", "cat sat")
    assert (moved.num_bytes, moved.num_chars) == (8, 8)         # " cat sat", not "cat sat"
    assert moved.tokens == [" cat", " sat"]


def test_score_many_keeps_input_order_and_ids(seed_case):
    tok, backend = seed_case
    scorer = Scorer(backend, tok, batch_tokens=4)
    items = [("the", " cat sat"), {"prompt": "the", "response": " cat", "id": 7},
             Example("the cat", " sat", id="x"), ("the", "")]
    scores = scorer.score_many(items)
    assert [s.id for s in scores] == [None, 7, "x", None]
    assert [round(s.logprob, 9) for s in scores] == [-1.1, -0.7, -0.4, 0.0]


def test_score_eos(seed_case):
    tok, backend = seed_case
    backend.table[(0, *tok.ids("the cat sat"))] = {tok.eos_token_id: 0.5}
    s = Scorer(backend, tok, score_eos=True).score("the", " cat sat")
    assert s.token_ids[-1] == tok.eos_token_id
    assert s.logprob == pytest.approx(-1.1 + math.log(0.5))


def test_scorer_takes_the_default_batch_budget_unless_given():
    backend = FakeBackend(8)            # no device: planned like a CPU backend
    assert Scorer(backend, WordTokenizer(["a"])).batch_tokens == 2048
    assert Scorer(backend, WordTokenizer(["a"]), batch_tokens=300).batch_tokens == 300
