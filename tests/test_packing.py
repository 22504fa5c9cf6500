"""Packed rows and shared contexts give the same numbers as scoring each example alone.

Every fast path is compared with (a) scoring the example alone (1e-5 nats per sequence) and
(b) the float64 reference of a full forward (1e-4 nats per sequence). Contexts are longer
than Gemma 2's 64-token sliding window so the per-layer masks are exercised.
"""

import logging
import math

import pytest
import torch

from loglik import Scorer
from loglik.backends.hf import ModelAdapter
from loglik.logprobs import reference_logprobs
from loglik.plan import plan_packed
from loglik.testing import FAMILIES, tiny_model

TOKENIZER_OF = {"gpt2": "byte_bpe", "llama": "sentencepiece", "mistral": "sentencepiece",
                "qwen2": "no_bos", "gpt_neox": "byte_bpe", "opt": "no_bos",
                "phi": "byte_bpe", "gemma2": "sentencepiece"}
PROMPTS = ["The capital of France is",
           "Question: what is the answer? The quick brown fox jumps over the lazy dog. " * 3,
           "def add(a, b):", ""]
RESPONSES = [" Paris.", " forty-two", "\n    return a + b", " the dog sleeps." * 3, "!"]
PAIRS = [(p, r) for p in PROMPTS for r in RESPONSES]        # 4 shared contexts x 5 responses
# Families that run by default; the rest of loglik.testing.FAMILIES run with the slow tests.
DEFAULT = ("llama", "gpt2", "gemma2")


def reference_logprob(model, enc):
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])   # (1, T)
    with torch.no_grad():
        logits = model(ids).logits                                         # (1, T, V)
    return reference_logprobs(logits, ids)[0, len(enc.context_ids) - 1:].sum().item()


@pytest.fixture(scope="module", params=[
    f if f in DEFAULT else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES])
def family(request, tokenizers, torch_threads):
    tok = tokenizers[TOKENIZER_OF[request.param]]
    model = tiny_model(request.param, len(tok), scale=10.0, seed=3)
    return request.param, model, tok


@pytest.mark.parametrize("shared", ["tree", "kv"])
def test_packed_and_shared_rows_match_alone_and_reference(family, shared, monkeypatch):
    """Shared contexts as tree rows or by KV reuse (backends/hf/kv.py), forced either way."""
    name, model, tok = family
    monkeypatch.setattr("loglik.backends.hf.kv.worth_it", lambda batch: shared == "kv")
    scorer = Scorer.from_hf(model, tok, batch_tokens=400)
    assert scorer.backend.packing, f"{name}: packed rows failed their self-check"
    assert scorer.backend.kv_sharing, f"{name}: KV reuse failed its self-check"
    assert scorer.backend.unmasked_padding, f"{name}: unmasked padding failed its self-check"
    scores = scorer.score_many(PAIRS)
    plan = scorer.last_plan
    assert plan.real_tokens < plan.request_tokens            # contexts were shared
    assert any(not b.simple for b in plan.batches)
    alone = Scorer.from_hf(model, tok, share_context=False, pack=False)
    worst_alone = worst_ref = 0.0
    for (p, r), s in zip(PAIRS, scores):
        a = alone.score(p, r)
        assert s.token_ids == a.token_ids
        torch.testing.assert_close(torch.tensor(s.token_logprobs), torch.tensor(a.token_logprobs),
                                   atol=1e-5, rtol=0)
        assert s.token_greedy == a.token_greedy
        worst_alone = max(worst_alone, abs(s.logprob - a.logprob))
        worst_ref = max(worst_ref, abs(s.logprob - reference_logprob(model, scorer.encode(p, r))))
    assert worst_alone < 1e-5, f"{name}: packed vs alone {worst_alone:.2e} nats"
    assert worst_ref < 1e-4, f"{name}: packed vs float64 reference {worst_ref:.2e} nats"


def test_packing_only_without_sharing(family):
    name, model, tok = family
    shared = Scorer.from_hf(model, tok, batch_tokens=300).score_many(PAIRS)
    packed = Scorer.from_hf(model, tok, batch_tokens=300, share_context=False)
    got = packed.score_many(PAIRS)
    assert packed.last_plan.real_tokens == packed.last_plan.request_tokens
    assert any(len(row) > 1 for b in packed.last_plan.batches for row in b.rows)
    for a, b in zip(shared, got):
        assert b.logprob == pytest.approx(a.logprob, abs=1e-5)


def test_score_choices_reads_the_prompt_once(llama_scorer, tiny_llama):
    prompt = "Question: what is the answer? Answer:"
    choices = [" forty-two", " Paris", " the quick brown fox", " 12,345"]
    got = llama_scorer.score_choices(prompt, choices)
    plan = llama_scorer.last_plan
    ctx = len(llama_scorer.encode(prompt, choices[0]).context_ids)
    assert plan.real_tokens == ctx + sum(s.num_tokens - 1 for s in got)
    assert plan.request_tokens == sum(ctx + s.num_tokens - 1 for s in got)
    for c, s in zip(choices, got):
        ref = reference_logprob(tiny_llama, llama_scorer.encode(prompt, c))
        assert s.logprob == pytest.approx(ref, abs=1e-4)
        assert s.logprob == pytest.approx(llama_scorer.score(prompt, c).logprob, abs=1e-5)
    assert [s.id for s in got] == [0, 1, 2, 3]


def test_details_are_the_same_when_packed(llama_scorer):
    pairs = PAIRS[:12]
    alone = Scorer(llama_scorer.backend, llama_scorer.tokenizer, share_context=False,
                   pack=False)
    got = llama_scorer.score_many(pairs, rank=True, entropy=True, top_k=3)
    for (p, r), s in zip(pairs, got):
        a = alone.score(p, r, rank=True, entropy=True, top_k=3)
        assert s.token_ranks == a.token_ranks
        assert s.token_entropies == pytest.approx(a.token_entropies, abs=1e-5)
        assert [[t for t, _ in alts] for alts in s.token_top] == \
            [[t for t, _ in alts] for alts in a.token_top]


def _drop(model, arg):
    """Make the model's body ignore (``"position_ids"``) or reject (``"4d"``) an input."""
    body = model.base_model
    forward = body.forward

    def patched(*args, **kwargs):
        if arg == "position_ids":
            kwargs.pop("position_ids", None)
        mask = kwargs.get("attention_mask")
        if arg == "4d" and (isinstance(mask, dict) or (mask is not None and mask.dim() == 4)):
            raise ValueError("this model takes 2D attention masks only")
        return forward(*args, **kwargs)

    body.forward = patched
    return model


@pytest.mark.parametrize("broken", ["4d", "position_ids"])
def test_models_that_cannot_pack_fall_back_to_rows_alone(broken, sp_tokenizer, caplog,
                                                         torch_threads):
    model = _drop(tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=4), broken)
    with caplog.at_level(logging.INFO, logger="loglik"):
        scorer = Scorer.from_hf(model, sp_tokenizer, batch_tokens=300)
    assert not scorer.backend.packing
    assert "one row each" in caplog.text
    scores = scorer.score_many(PAIRS)
    assert scorer.last_plan.padded_tokens >= scorer.last_plan.real_tokens   # plain batches
    for (p, r), s in zip(PAIRS, scores):
        ref = reference_logprob(model, scorer.encode(p, r))
        assert s.logprob == pytest.approx(ref, abs=1e-4)
        assert s.logprob == pytest.approx(math.fsum(s.token_logprobs), abs=1e-12)


def test_kv_reuse_in_small_groups_matches_alone(sp_tokenizer, torch_threads, monkeypatch):
    """A budget that lets only a few branches share a step still gives the same numbers,
    and each step stays within the budget (rows x keys)."""
    from loglik.backends.hf import kv as hf_kv

    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=7)
    scorer = Scorer.from_hf(model, sp_tokenizer, batch_tokens=90)
    steps = []
    real_cache_of = ModelAdapter.prefix_cache
    monkeypatch.setattr(hf_kv, "worth_it", lambda batch: True)
    monkeypatch.setattr(ModelAdapter, "prefix_cache", lambda self, layers, rows: (
        steps.append((len(rows), layers[0][0].shape[2])), real_cache_of(self, layers, rows))[1])
    pairs = [(PROMPTS[1], r) for r in RESPONSES] + [(PROMPTS[0], r) for r in RESPONSES]
    got = scorer.score_many(pairs)
    alone = Scorer(scorer.backend, scorer.tokenizer, share_context=False, pack=False)
    for (p, r), s in zip(pairs, got):
        assert s.logprob == pytest.approx(alone.score(p, r).logprob, abs=1e-5)
    assert len(steps) > 2 and any(rows > 1 for rows, _ in steps)
    lengths = [len(scorer.encode(p, r).response_ids) - 1 for p, r in pairs]
    assert all(rows == 1 or rows * (keys + max(lengths)) <= 90 for rows, keys in steps)


def _break_kv(monkeypatch):
    def broken(self, layers, rows):
        raise RuntimeError("this cache cannot be rebuilt")

    monkeypatch.setattr(ModelAdapter, "prefix_cache", broken)


def test_models_that_cannot_reuse_kv_keep_tree_rows(sp_tokenizer, caplog, torch_threads,
                                                    monkeypatch):
    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=4)
    _break_kv(monkeypatch)
    with caplog.at_level(logging.INFO, logger="loglik"):
        scorer = Scorer.from_hf(model, sp_tokenizer, batch_tokens=300)
    assert scorer.backend.packing and not scorer.backend.kv_sharing
    assert "tree rows" in caplog.text
    for (p, r), s in zip(PAIRS, scorer.score_many(PAIRS)):
        assert s.logprob == pytest.approx(reference_logprob(model, scorer.encode(p, r)),
                                          abs=1e-4)


def test_models_that_need_the_padding_mask_keep_it(sp_tokenizer, torch_threads):
    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=4)
    body, forward = model.base_model, model.base_model.forward

    def needs_mask(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if kwargs.get("attention_mask") is None and ids is not None and ids.shape[0] > 1:
            raise ValueError("pass an attention mask for a batch")
        return forward(*args, **kwargs)

    body.forward = needs_mask
    scorer = Scorer.from_hf(model, sp_tokenizer, share_context=False, pack=False)
    assert scorer.backend.fast and not scorer.backend.unmasked_padding
    got = scorer.score_many(PAIRS)
    for (p, r), s in zip(PAIRS, got):
        assert s.logprob == pytest.approx(reference_logprob(model, scorer.encode(p, r)),
                                          abs=1e-4)


def test_bf16_packed_rows_match_bf16_alone(sp_tokenizer, torch_threads):
    """bf16 body, fp32 logsumexp: packed equals alone to bf16 rounding (noted, not 1e-5)."""
    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=5).to(torch.bfloat16)
    scorer = Scorer.from_hf(model, sp_tokenizer, batch_tokens=400)
    assert scorer.backend.packing
    alone = Scorer(scorer.backend, scorer.tokenizer, share_context=False, pack=False)
    for (p, r), s in zip(PAIRS[:12], scorer.score_many(PAIRS[:12])):
        assert s.logprob == pytest.approx(alone.score(p, r).logprob, abs=0.05 * s.num_tokens)


def test_threads_option_sets_torch_threads(tiny_model_dir):
    from loglik import ConfigError

    before = torch.get_num_threads()
    try:
        Scorer.from_pretrained(tiny_model_dir, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        Scorer.from_pretrained(tiny_model_dir, threads=0)


def test_packed_rows_apply_the_head_only_at_scored_positions(sp_tokenizer, torch_threads):
    """The output head sees one row per scored token, in chunks, on the packed path too."""
    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=6)
    scorer = Scorer.from_hf(model, sp_tokenizer, batch_tokens=400, chunk_size=3)
    calls = []
    hook = model.get_output_embeddings().register_forward_hook(
        lambda mod, inp, out: calls.append(inp[0].shape))
    try:
        scores = scorer.score_many(PAIRS)
    finally:
        hook.remove()
    assert any(not b.simple for b in scorer.last_plan.batches)
    assert all(len(shape) == 2 and shape[0] <= 3 for shape in calls)     # (C <= 3, H) chunks
    assert sum(shape[0] for shape in calls) == sum(s.num_tokens for s in scores)


@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_kv_reuse_pads_short_branches_within_learned_positions(family, sp_tokenizer,
                                                               torch_threads):
    """A long context with a short branch beside a short context with a long branch: the
    short branch's padding must not count positions past the model's table (40 here)."""
    from loglik.backends.hf.kv import score_kv
    from loglik.types import Detail, Request

    model = tiny_model(family, len(sp_tokenizer), scale=10.0, seed=3, max_positions=40)
    scorer = Scorer.from_hf(model, sp_tokenizer)
    long_ctx, short_ctx = tuple(range(5, 42)), (7, 8, 9)
    requests = [Request(long_ctx, (11, 12)), Request(long_ctx, (13, 14, 15)),
                Request(short_ctx, tuple(range(20, 50))), Request(short_ctx, (3, 4) * 15)]
    plan = plan_packed([r.context_ids for r in requests], [len(r.target_ids) for r in requests],
                       batch_tokens=200)
    got = {}
    for batch in plan.batches:
        got.update(score_kv(scorer.backend.adapter, batch, requests, Detail(), batch_tokens=200))
    for i, r in enumerate(requests):
        ids = torch.tensor([r.context_ids + r.target_ids])
        with torch.no_grad():
            ref = reference_logprobs(model(ids).logits, ids)[0, -len(r.target_ids):]
        assert got[i].logprobs == pytest.approx(ref.tolist(), abs=1e-4)
