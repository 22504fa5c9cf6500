"""logprobs.py: the chunked head against gather(log_softmax(logits.double()), ids)."""

import math

import pytest
import torch

from loglik.logprobs import (head_logprobs, predicting_positions, reference_logprobs, shift,
                             softcap)


def test_predicting_positions_is_the_one_shift():
    # context of 3 tokens, 2 targets: positions 2 and 3 predict them
    assert predicting_positions(3, 2).tolist() == [2, 3]
    assert predicting_positions(1, 3, start=5).tolist() == [5, 6, 7]
    with pytest.raises(ValueError):
        predicting_positions(0, 1)


def test_shift_aligns_position_t_with_token_t_plus_1():
    logits = torch.arange(2 * 4 * 3, dtype=torch.float).view(2, 4, 3)
    labels = torch.tensor([[0, 1, 2, 0], [2, 2, 1, 0]])
    lg, lb = shift(logits, labels)
    assert lg.shape == (2, 3, 3) and lb.tolist() == [[1, 2, 0], [2, 1, 0]]
    assert torch.equal(lg[0, 0], logits[0, 0])


def test_reference_hand_computed():
    # two-token vocabulary with logits (0, log 3): probabilities 1/4, 3/4
    logits = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0]]])
    ids = torch.tensor([[0, 1]])
    assert reference_logprobs(logits, ids).tolist()[0] == pytest.approx([math.log(0.75)])


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_head_matches_plain_formula(chunk):
    torch.manual_seed(0)
    n, h, v = 50, 16, 97
    hidden = torch.randn(n, h)
    head = torch.nn.Linear(h, v, bias=True)
    targets = torch.randint(0, v, (n,))
    out = head_logprobs(hidden, targets, head, vocab_size=v, chunk_size=chunk,
                        rank=True, entropy=True, top_k=5)
    logits = head(hidden).double()                                   # (N, V)
    logp = torch.log_softmax(logits, -1)
    expected = logp.gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=0)
    assert out.logprobs.dtype == torch.float64
    assert torch.equal(out.greedy, logits.argmax(-1) == targets)
    sorted_rank = (logits > logits.gather(-1, targets[:, None])).sum(-1) + 1
    assert torch.equal(out.ranks, sorted_rank)
    torch.testing.assert_close(out.entropies, -(logp.exp() * logp).sum(-1), atol=1e-5, rtol=0)
    top_vals, top_ids = logp.topk(5, -1)
    assert torch.equal(out.top_ids, top_ids)
    torch.testing.assert_close(out.top_logprobs, top_vals, atol=1e-5, rtol=0)


@pytest.mark.parametrize("chunk", [3, None])
def test_head_plain_path_in_place_leaves_inputs_alone(chunk):
    """Without rank/entropy/top-k the log-softmax runs in place on the head's output; an
    identity head (logits passed in as hidden) must not see its input overwritten."""
    torch.manual_seed(2)
    logits = torch.randn(10, 31) * 4
    logits[3] = float("-inf")                       # a row with nothing possible
    logits[4, 7] = 1e4                              # one huge logit: no overflow
    kept = logits.clone()
    targets = torch.randint(0, 31, (10,))
    out = head_logprobs(logits, targets, lambda x: x, vocab_size=31, chunk_size=chunk)
    assert torch.equal(logits, kept)
    expected = torch.log_softmax(kept.double(), -1).gather(-1, targets[:, None]).squeeze(-1)
    finite = torch.isfinite(expected)
    # fp32 logits: a log-prob near -1e4 carries ~1e-3 of rounding, hence the relative term
    torch.testing.assert_close(out.logprobs[finite], expected[finite], atol=1e-5, rtol=1e-7)
    assert not finite[3] and not torch.isfinite(out.logprobs[3])
    live = torch.arange(10) != 3
    assert torch.equal(out.greedy[live], (kept.argmax(-1) == targets)[live])


def test_head_in_bf16_keeps_fp32_logsumexp():
    torch.manual_seed(1)
    hidden = torch.randn(20, 8).bfloat16()
    head = torch.nn.Linear(8, 300, bias=False).bfloat16()
    targets = torch.randint(0, 300, (20,))
    out = head_logprobs(hidden, targets, head, vocab_size=300)
    logits = head(hidden).double()
    expected = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, expected, atol=1e-5, rtol=0)


def test_softcap_transform():
    x = torch.tensor([0.0, 1.0, 100.0])
    assert softcap(x, None) is x
    torch.testing.assert_close(softcap(x, 5.0), 5.0 * torch.tanh(x / 5.0))
    hidden = torch.randn(4, 8)
    head = torch.nn.Linear(8, 11)
    t = torch.tensor([1, 2, 3, 4])
    out = head_logprobs(hidden, t, head, vocab_size=11, transform=lambda z: softcap(z, 2.0))
    ref = torch.log_softmax(softcap(head(hidden).double(), 2.0), -1).gather(-1, t[:, None])
    torch.testing.assert_close(out.logprobs, ref.squeeze(-1), atol=1e-6, rtol=0)
