"""Packed rows as variable-length segments (backends/hf/varlen.py) and the CUDA defaults."""

from __future__ import annotations

import random

import pytest
import torch

from loglik import Scorer
from loglik.backends.hf import HFBackend, default_dtype
from loglik.backends.hf import packed as packed_mod
from loglik.backends.hf import tree_attention as ta
from loglik.backends.hf import varlen as vl
from loglik.backends.hf.backend import head_chunk_rows
from loglik.logprobs import reference_logprobs
from loglik.masks import layout_rows, tree_causal
from loglik.plan import Unit, plan_packed
from loglik.testing import tiny_model
from loglik.types import Request

VOCAB = 300


def _requests(seed: int, n: int, shared: bool = False) -> list[Request]:
    rng = random.Random(seed)
    ctx = tuple(rng.randrange(VOCAB) for _ in range(12))
    return [Request(ctx if shared else tuple(rng.randrange(VOCAB)
                                             for _ in range(rng.randint(1, 30))),
                    tuple(rng.randrange(VOCAB) for _ in range(rng.randint(1, 10))))
            for _ in range(n)]


def _reference(model, r: Request) -> float:
    ids = torch.tensor([list(r.context_ids) + list(r.target_ids)])              # (1, T)
    with torch.inference_mode():
        lp = reference_logprobs(model(ids).logits, ids)[0]                      # (T-1,)
    return lp[len(r.context_ids) - 1:].sum().item()


def _score_packed(backend: HFBackend, requests: list[Request]) -> dict:
    plan = plan_packed([r.context_ids for r in requests], [len(r.target_ids) for r in requests],
                       batch_tokens=96)
    got = {}
    for batch in plan.batches:
        got.update(backend.score_packed(batch, requests))
    return got


def test_segments_cut_at_units_and_rows():
    rows = [(Unit((1, 2, 3), (0,), (1,)), Unit((4, 5), (1,), (2,))), (Unit((6,), (2,), (1,)),)]
    layout = layout_rows(rows, [(7, 8), (9, 9, 9), (5, 5)], width=9)
    # row 0: unit 0 = 3 + 1 tokens, unit 1 = 2 + 2, padding 1; row 1: unit 0 = 1 + 1, pad 7
    cu, longest = vl.segments(layout)
    assert cu.tolist() == [0, 4, 8, 9, 11, 18]
    assert cu.dtype == torch.int32 and longest == 7


def test_varlen_matches_float64_reference_without_a_dense_mask(torch_threads, monkeypatch):
    model = tiny_model("llama", VOCAB, scale=10.0, seed=3)
    backend = HFBackend(model, varlen=True)
    assert backend.varlen and model.config._attn_implementation == vl.NAME
    calls = {"segments": 0, "dense": 0}
    loop, dense = vl.segment_attention, packed_mod.attention_masks

    def counting_loop(*a, **k):
        calls["segments"] += 1
        return loop(*a, **k)

    def counting_dense(*a, **k):
        calls["dense"] += 1
        return dense(*a, **k)

    monkeypatch.setattr(vl, "segment_attention", counting_loop)
    monkeypatch.setattr(packed_mod, "attention_masks", counting_dense)
    requests = _requests(0, 20)
    got = _score_packed(backend, requests)
    assert calls["segments"] > 0 and calls["dense"] == 0
    for i, r in enumerate(requests):
        assert sum(got[i].logprobs) == pytest.approx(_reference(model, r), abs=1e-4)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_contexts_take_their_tree_block_and_stay_exact(torch_threads, monkeypatch,
                                                              family):
    model = tiny_model(family, VOCAB, scale=10.0, seed=4)
    backend = HFBackend(model, varlen=True)
    assert backend.varlen
    monkeypatch.setattr(packed_mod, "attention_masks", None)          # no dense mask built
    monkeypatch.setattr(backend, "kv_sharing", False)                  # tree rows, not KV reuse
    requests = _requests(1, 4, shared=True) + _requests(2, 3) + _requests(3, 3, shared=True)
    got = _score_packed(backend, requests)
    for i, r in enumerate(requests):
        assert sum(got[i].logprobs) == pytest.approx(_reference(model, r), abs=1e-4)


def test_segment_plan_tree_parts_and_padding():
    # row 0: a tree unit (context 3, branches of 2 and 1 targets[:-1] tokens) + a plain unit;
    # row 1: a plain unit and padding
    rows = [(Unit((1, 2, 3), (0, 1), (1, 1)), Unit((4, 5), (2,), (1,))), (Unit((6,), (3,), (1,)),)]
    layout = layout_rows(rows, [(7, 8, 9), (9, 9), (5, 5), (3, 3)], width=10)
    plan = vl.segment_plan(layout, torch.float32)
    assert [(g.row, g.start, g.end, g.mask is None, g.tree is None) for g in plan.segments] == [
        (0, 0, 6, True, False), (0, 6, 9, True, True), (1, 0, 2, True, True)]
    assert not plan.all_plain
    tree = plan.segments[0].tree
    # context 3 tokens; branch 0 = branch tokens 0-1, branch 1 = token 2 (padded with itself)
    assert tree.context == 3
    assert tree.slots.tolist() == [[0, 1], [2, 2]] and tree.flat.tolist() == [0, 1, 2]


@pytest.mark.parametrize("branches", [[2, 1], [1, 1, 1, 1], [5, 3, 7], [1], [4]])
@pytest.mark.parametrize("heads", [(4, 4), (4, 2)])
def test_tree_attention_by_parts_equals_the_dense_tree_mask(branches, heads):
    torch.manual_seed(len(branches) + heads[1])
    context = 6
    br = torch.tensor([-1] * context + [j for j, n in enumerate(branches) for _ in range(n)])
    length = len(br)
    hq, hkv = heads
    q = torch.randn(1, hq, length, 8, dtype=torch.float64) * 3
    k = torch.randn(1, hkv, length, 8, dtype=torch.float64) * 3
    v = torch.randn(1, hkv, length, 8, dtype=torch.float64)
    dense = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1),
        attn_mask=tree_causal(br))                                       # (1, Hq, L, D)
    parts = ta.tree_parts(br)
    assert parts.context == context and parts.slots.shape == (len(branches), max(branches))
    got = ta.tree_attention(q.float(), k.float(), v.float(), parts, None)
    assert (got.double() - dense).abs().max() < 1e-5
    assert (ta.tree_attention(q, k, v, parts, 0.3) - torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(hq // hkv, 1), v.repeat_interleave(hq // hkv, 1),
        attn_mask=tree_causal(br), scale=0.3)).abs().max() < 1e-10


def test_attention_lse_kernel_and_math_agree():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    for causal in (False, True):
        o1, l1 = ta.attention_lse(q, k, v, causal, None)
        o2, l2 = ta.attention_lse_math(q, k, v, causal, None)
        assert (o1 - o2).abs().max() < 1e-5 and (l1 - l2).abs().max() < 1e-5
        assert l1.shape == (2, 3, 7)


def test_tree_parts_refuses_other_layouts():
    assert ta.tree_parts(torch.tensor([0, 0, 1])) is None               # no context
    assert ta.tree_parts(torch.tensor([-1, -1])) is None                # no branch
    assert ta.tree_parts(torch.tensor([-1, 0, -1, 1])) is None          # context after a branch
    assert ta.tree_parts(torch.tensor([-1, 0, 1, 0])) is None           # a branch in two runs


def test_compact_module_takes_segments(torch_threads, tmp_path):
    from loglik.backends.hf.compact import load_compact

    tiny_model("llama", VOCAB, scale=10.0, seed=8).save_pretrained(tmp_path)
    compact = load_compact(str(tmp_path))
    backend = HFBackend(compact, varlen=True)
    assert backend.varlen
    requests = _requests(4, 4, shared=True) + _requests(5, 5)
    got = _score_packed(backend, requests)
    for i, r in enumerate(requests):
        assert sum(got[i].logprobs) == pytest.approx(_reference(compact, r), abs=1e-4)


def test_off_by_default_on_cpu_and_for_sliding_windows(torch_threads):
    model = tiny_model("llama", VOCAB, seed=5)
    assert not HFBackend(model).varlen
    assert model.config._attn_implementation == "sdpa"       # CPU behaviour unchanged
    gemma = tiny_model("gemma2", VOCAB, seed=5)
    assert vl.supported(gemma.config) is not None
    assert not HFBackend(gemma, varlen=True).varlen


def test_device_defaults():
    assert default_dtype("cuda") == "bfloat16" and default_dtype("cpu") == "float32"
    assert head_chunk_rows(torch.device("cpu"), 32000) is None


@pytest.mark.gpu
def test_cuda_defaults_bf16_varlen_and_head_chunks(tmp_path, sp_tokenizer):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    model = tiny_model("llama", len(sp_tokenizer), scale=10.0, seed=6)
    model.save_pretrained(tmp_path)
    sp_tokenizer.save_pretrained(tmp_path)
    scorer = Scorer.from_pretrained(str(tmp_path), device="cuda")
    backend = scorer.backend
    assert backend.dtype == torch.bfloat16 and backend.varlen
    free, _ = torch.cuda.mem_get_info()
    assert 16 <= backend.chunk_size and backend.chunk_size * 4 * backend.vocab_size <= free
    pairs = [("The cat sat on", " the mat"), ("Hello", " world, again"), ("A", " b c d e")]
    cpu = Scorer.from_pretrained(str(tmp_path)).score_many(pairs)
    gpu = scorer.score_many(pairs)
    for a, b in zip(cpu, gpu):
        assert b.logprob == pytest.approx(a.logprob, abs=5e-2 * max(1, b.num_tokens))


@pytest.mark.gpu
def test_cuda_varlen_kernel_matches_segment_loop():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    torch.manual_seed(0)
    cu = torch.tensor([0, 5, 12, 13, 32], dtype=torch.int32)
    q = torch.randn(32, 4, 16, device="cuda", dtype=torch.bfloat16)             # (N, Hq, D)
    k = torch.randn(32, 2, 16, device="cuda", dtype=torch.bfloat16)             # (N, Hkv, D)
    v = torch.randn(32, 2, 16, device="cuda", dtype=torch.bfloat16)
    ref = vl._segment_loop(q.float(), k.float(), v.float(), cu, None)
    qb, kb, vb = (x.transpose(0, 1).reshape(1, x.shape[1], 32, 16) for x in (q, k, v))
    bounds = cu.tolist()
    plan = vl.SegmentPlan(tuple(vl.Segment(0, s, e) for s, e in zip(bounds[:-1], bounds[1:])),
                          cu, 19, True)
    out = vl.attend(qb, kb, vb, plan, None)                                  # (1, 32, Hq, D)
    torch.testing.assert_close(out[0].float(), ref, atol=2e-2, rtol=2e-2)
    loop = vl.segment_attention(qb.float(), kb.float(), vb.float(), plan, None)
    torch.testing.assert_close(loop[0], ref, atol=1e-5, rtol=1e-5)
