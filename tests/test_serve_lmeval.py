"""lm-evaluation-harness's own ``local-completions`` model against ``loglik serve``.

lm-eval 0.4.13's ``LocalCompletionsAPI`` sends ``echo=True, max_tokens=1, logprobs=1`` and
sums ``token_logprobs[ctxlen:-1]`` (the last entry is the one generated token), so the
server must echo every prompt token and append exactly one more. Its loglikelihoods must
equal lm-eval's ``hf`` model on the same weights (1e-4), and ``is_greedy`` too.
"""

from __future__ import annotations

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install 'loglik[lmeval]'")
pytest.importorskip("tenacity", reason="lm-eval's API models need tenacity: pip install tenacity")

pytestmark = pytest.mark.slow   # lm-eval's hf model and three servers: ~80 s on 2 busy cores

TOL = 1e-4
# No two pairs with the same joint text (lm-eval's hf model shares such groups, see
# tests/test_lmeval.py::test_hf_depends_on_neighbours_loglik_is_exact).
PAIRS = [("The capital of France is", " Paris."), ("The capital of France is", " Rome."),
         ("Question: what is the answer?\nAnswer:", " forty-two"),
         ("The dog", " sleeps on the mat."), ("", "The cat sleeps."),
         ("A long context about nothing in particular and then some more words", " end")]


def loglikelihoods(lm, pairs):
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)]
    return lm.loglikelihood(reqs, disable_tqdm=True)


@pytest.fixture(scope="module")
def hf_answers(tiny_model_dir, torch_threads):
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=tiny_model_dir, batch_size=1, device="cpu")
    return {p: loglikelihoods(hf, [p])[0] for p in PAIRS}   # one at a time: no sharing


def local_completions(url, tiny_model_dir, **kwargs):
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    return LocalCompletionsAPI(base_url=url + "/v1/completions", model="tiny",
                               tokenizer=tiny_model_dir, tokenizer_backend="huggingface",
                               max_retries=1, **kwargs)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_tokenized_requests_equal_hf(llama_scorer, tiny_model_dir, hf_answers, batch_size):
    from loglik.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(llama_scorer, model_name="tiny")) as srv:
        # add_bos_token=True: the token ids lm-eval's hf model builds for this tokenizer
        lm = local_completions(srv.url, tiny_model_dir, tokenized_requests=True,
                               add_bos_token=True, batch_size=batch_size)
        got = loglikelihoods(lm, PAIRS)
    for pair, (lp, greedy) in zip(PAIRS, got):
        want_lp, want_greedy = hf_answers[pair]
        assert abs(lp - want_lp) <= TOL, (pair, lp, want_lp)
        assert greedy == want_greedy, pair
    assert all(lp < 0 for lp, _ in got)


def test_text_requests_equal_hf_where_the_boundary_is_joint(tiny_llama, sp_tokenizer,
                                                             tiny_model_dir, torch_threads):
    """``tokenized_requests=False``: lm-eval decodes its ids to text and counts ``ctxlen`` in
    its own tokens, without BOS; the server then must not add one (``bos="never"``), and both
    sides read the same ids where the boundary is joint (re-tokenizing gives the same ids)."""
    from lm_eval.models.huggingface import HFLM

    from loglik import Scorer
    from loglik.serve import BackgroundServer, create_app

    never = Scorer.from_hf(tiny_llama, sp_tokenizer, bos="never")
    pairs = [p for p in PAIRS if p[0] and never.encode(*p).boundary == "joint"]
    assert len(pairs) >= 4
    hf = HFLM(pretrained=tiny_model_dir, batch_size=1, device="cpu", add_bos_token=False)
    want = {p: loglikelihoods(hf, [p])[0] for p in pairs}
    with BackgroundServer(create_app(never, model_name="tiny")) as srv:
        lm = local_completions(srv.url, tiny_model_dir, tokenized_requests=False,
                               add_bos_token=False)
        got = loglikelihoods(lm, pairs)
    for pair, (lp, greedy) in zip(pairs, got):
        assert abs(lp - want[pair][0]) <= TOL, (pair, lp, want[pair][0])
        assert greedy == want[pair][1], pair
