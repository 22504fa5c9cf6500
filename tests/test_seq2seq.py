"""Encoder-decoder models (T5, BART): exact against a float64 reference, every option of score.

Reference: one full forward of the model (encoder on the prompt's ids, decoder on
``[decoder_start] + response[:-1]``), logits cast to float64, log_softmax, gather.
"""

import json
import math

import pytest
import torch

from loglik import Scorer
from loglik.cli import main
from loglik.testing import metaspace_always_tokenizer, prefix_space_bpe_tokenizer, tiny_seq2seq

from .test_tokenize import ADVERSARIAL

TOKENIZER = {"t5": metaspace_always_tokenizer, "bart": prefix_space_bpe_tokenizer}


@pytest.fixture(scope="module", params=["t5", "bart"])
def s2s(request, torch_threads):
    tok = TOKENIZER[request.param]()
    model = tiny_seq2seq(request.param, tok, scale=4.0, seed=2)
    return request.param, tok, model, Scorer.from_seq2seq(model, tok, batch_tokens=128)


def reference(model, enc):
    start = model.config.decoder_start_token_id
    dec = torch.tensor([[start, *enc.response_ids]])                      # (1, n+1)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([enc.context_ids]),
                       decoder_input_ids=dec[:, :-1]).logits[0]           # (n, V)
    logp = torch.log_softmax(logits.double(), dim=-1)                     # (n, V)
    return logp, logp.gather(-1, dec[0, 1:, None])[:, 0]                  # (n, V), (n,)


def test_matches_float64_reference(s2s):
    family, tok, model, scorer = s2s
    assert scorer.backend.head_checked   # the chunked head on decoder states is the model's
    scores = scorer.score_many(ADVERSARIAL, rank=True, entropy=True, top_k=3)
    worst = 0.0
    for (prompt, response), s in zip(ADVERSARIAL, scores):
        enc = scorer.encode(prompt, response)
        assert s.boundary == "seq2seq" and s.token_ids == list(enc.response_ids)
        # the prompt goes through the encoder with the tokenizer's own special tokens
        assert list(enc.context_ids) == (tok(prompt.rstrip())["input_ids"] or [enc.context_ids[0]])
        if not enc.response_ids:
            assert s.logprob == 0.0 and response.strip() == ""
            continue
        logp, ref = reference(model, enc)
        worst = max(worst, abs(s.logprob - ref.sum().item()))
        torch.testing.assert_close(torch.tensor(s.token_logprobs, dtype=torch.float64), ref,
                                   atol=1e-4, rtol=0)
        best = logp.argmax(-1)
        assert s.token_greedy == (best == torch.tensor(enc.response_ids)).tolist()
        ranks = [1 + int((row > row[t]).sum()) for row, t in zip(logp, enc.response_ids)]
        assert s.token_ranks == ranks
        ent = -(logp.exp() * logp).sum(-1)
        assert s.token_entropies == pytest.approx(ent.tolist(), abs=1e-4)
        assert [t for t, _ in s.token_top[0]] == tok.convert_ids_to_tokens(
            logp[0].topk(3).indices.tolist())
    assert worst < 1e-4


def test_batch_invariance(s2s):
    family, tok, model, scorer = s2s
    together = scorer.score_many(ADVERSARIAL)
    alone = [scorer.score(p, r) for p, r in ADVERSARIAL[:6]]
    for a, b in zip(alone, together):
        assert a.token_ids == b.token_ids and abs(a.logprob - b.logprob) < 1e-4


def test_eos_scored_only_when_asked(s2s):
    family, tok, model, _ = s2s
    plain = Scorer.from_seq2seq(model, tok).score("Hello", " world")
    eos = Scorer.from_seq2seq(model, tok, score_eos=True).score("Hello", " world")
    assert tok.eos_token_id not in plain.token_ids
    assert eos.token_ids == plain.token_ids + [tok.eos_token_id]
    assert eos.token_logprobs[:-1] == pytest.approx(plain.token_logprobs, abs=1e-5)


def test_ids_records(s2s):
    family, tok, model, scorer = s2s
    enc = scorer.encode("The capital of France is", " Paris")
    by_ids = scorer.score_ids(enc.context_ids, enc.response_ids)
    assert by_ids.boundary == "ids"
    assert by_ids.logprob == pytest.approx(scorer.score("The capital of France is",
                                                        " Paris").logprob, abs=1e-5)


def test_cli_loads_a_seq2seq_folder(tmp_path, s2s):
    family, tok, model, scorer = s2s
    folder = tmp_path / family
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    data = tmp_path / "in.jsonl"
    data.write_text(json.dumps({"prompt": "The capital of France is", "response": " Paris"})
                    + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--model", str(folder), "-o", str(out)]) == 0
    rec = json.loads(out.read_text())
    assert rec["boundary"] == "seq2seq"
    assert rec["logprob"] == pytest.approx(scorer.score("The capital of France is",
                                                        " Paris").logprob, abs=1e-5)
    assert math.isclose(rec["logprob"], math.fsum(rec["token_logprobs"]), abs_tol=1e-9)
