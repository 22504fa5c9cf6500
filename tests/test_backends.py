"""Every family, every tokenizer style: the scorer equals the float64 reference.

Reference: one full forward of context + response alone (no padding), logits cast to
float64, log_softmax, gather. Tolerance: 1e-4 nats per sequence (fp32).
"""

import math

import pytest
import torch

from loglik import Scorer
from loglik.logprobs import reference_logprobs
from loglik.testing import FAMILIES, tiny_model

from .test_tokenize import ADVERSARIAL

TOKENIZER_OF = {"gpt2": "byte_bpe", "llama": "sentencepiece", "mistral": "sentencepiece",
                "qwen2": "no_bos", "gpt_neox": "byte_bpe", "opt": "no_bos",
                "phi": "byte_bpe", "gemma2": "sentencepiece"}
PAIRS = ADVERSARIAL + [("The quick brown fox jumps over the lazy dog. " * 3, " The dog sleeps.")]


def reference(model, enc):
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
    with torch.no_grad():
        logits = model(ids).logits                       # (1, T, V)
    per_token = reference_logprobs(logits, ids)[0]       # (T-1,)
    return per_token[len(enc.context_ids) - 1:]          # response positions


@pytest.fixture(scope="module", params=FAMILIES)
def family_scorer(request, tokenizers, torch_threads):
    tok = tokenizers[TOKENIZER_OF[request.param]]
    model = tiny_model(request.param, len(tok), scale=10.0, seed=1)
    return request.param, model, Scorer.from_hf(model, tok, batch_tokens=256)


def test_matches_float64_reference(family_scorer):
    family, model, scorer = family_scorer
    assert scorer.backend.fast, f"{family}: head-only path failed its self-check"
    scores = scorer.score_many(PAIRS)
    worst = 0.0
    for (prompt, response), s in zip(PAIRS, scores):
        enc = scorer.encode(prompt, response)
        ref = reference(model, enc)
        assert len(s.token_logprobs) == len(ref) == s.num_tokens
        torch.testing.assert_close(torch.tensor(s.token_logprobs, dtype=torch.float64), ref,
                                   atol=1e-5, rtol=0)
        worst = max(worst, abs(s.logprob - ref.sum().item()))
        assert s.logprob == pytest.approx(math.fsum(s.token_logprobs), abs=1e-12)
    assert worst < 1e-4, f"{family}: largest disagreement {worst:.2e} nats"


def test_batch_invariance(family_scorer):
    _, _, scorer = family_scorer
    alone = [scorer.score(p, r).logprob for p, r in PAIRS]
    for budget in (64, 1000, 100000):
        batched = Scorer(scorer.backend, scorer.tokenizer, batch_tokens=budget).score_many(PAIRS)
        for a, b in zip(alone, batched):
            assert b.logprob == pytest.approx(a, abs=1e-5)


def test_greedy_flags_match_argmax(family_scorer):
    _, model, scorer = family_scorer
    prompt, response = "The capital of France is", " Paris."
    s = scorer.score(prompt, response)
    enc = scorer.encode(prompt, response)
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
    with torch.no_grad():
        argmax = model(ids).logits[0].argmax(-1)[len(enc.context_ids) - 1:-1]
    assert s.token_greedy == (argmax == torch.tensor(enc.response_ids)).tolist()


def test_gemma2_soft_capping_is_applied(tokenizers):
    tok = tokenizers["sentencepiece"]
    model = tiny_model("gemma2", len(tok), scale=50.0, seed=2)   # logits far past the cap
    scorer = Scorer.from_hf(model, tok)
    enc = scorer.encode("The capital of France is", " Paris")
    got = scorer.score("The capital of France is", " Paris").logprob
    assert got == pytest.approx(reference(model, enc).sum().item(), abs=1e-4)
    # without the cap the number would be far off: the transform matters here
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
    with torch.no_grad():
        hidden = model.base_model(ids).last_hidden_state
        raw = model.get_output_embeddings()(hidden)
    uncapped = reference_logprobs(raw, ids)[0, len(enc.context_ids) - 1:].sum().item()
    assert abs(uncapped - got) > 1.0


def test_model_whose_head_fast_path_is_wrong_falls_back(tokenizers, caplog):
    """A model whose logits are not head(base_model(x)) is scored from full logits."""
    tok = tokenizers["byte_bpe"]
    model = tiny_model("gpt2", len(tok), scale=5.0)

    class Shifted(type(model)):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 0.5          # a post-head transform loglik can't know
            return out

    model.__class__ = Shifted
    scorer = Scorer.from_hf(model, tok)
    assert not scorer.backend.fast
    enc = scorer.encode("Hello", " world")
    assert scorer.score("Hello", " world").logprob == pytest.approx(
        reference(model, enc).sum().item(), abs=1e-4)


@pytest.mark.gpu
def test_cuda_matches_reference(tokenizers):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    tok = tokenizers["sentencepiece"]
    model = tiny_model("llama", len(tok), scale=10.0, seed=1)
    cpu = Scorer.from_hf(model, tok).score_many(PAIRS)
    gpu = Scorer.from_hf(model.to("cuda"), tok).score_many(PAIRS)
    for a, b in zip(cpu, gpu):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-4)
