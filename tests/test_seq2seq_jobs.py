"""Encoder-decoder models and conversations through the jobs around the scorer: ``loglik
serve`` (real uvicorn on loopback), lm-eval (``LoglikLM`` through ``simple_evaluate`` on
local tasks) and Ray Data (a local cluster). Each gives the scorer's own numbers, or a clear
error where the feature does not apply to an encoder-decoder model."""

from __future__ import annotations

import json

import pytest
import torch

from loglik import Scorer, read_examples
from loglik.testing import tiny_seq2seq

from .test_distributed import local_ray  # noqa: F401  (the module's local Ray cluster)
from .test_seq2seq import TOKENIZER

PAIRS = [{"prompt": "The capital of France is", "response": " Paris.", "id": "a"},
         {"prompt": "Translate: hello", "response": " bonjour le monde"},
         {"prompt": "", "response": "The dog sleeps."}]


@pytest.fixture(scope="module")
def bart(tmp_path_factory, torch_threads):
    """A saved tiny BART folder and its scorer."""
    tok = TOKENIZER["bart"]()
    model = tiny_seq2seq("bart", tok, scale=4.0, seed=2)
    folder = tmp_path_factory.mktemp("bart")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), Scorer.from_pretrained(str(folder))


@pytest.mark.slow
def test_serve_scores_pairs_and_refuses_completions_with_the_reason(bart):
    pytest.importorskip("uvicorn")
    from loglik.serve import BackgroundServer, ServeConfig, create_app

    from .test_serve import post

    folder, scorer = bart
    with BackgroundServer(create_app(scorer, ServeConfig(), model_name="bart")) as srv:
        code, body, _ = post(srv.url + "/v1/score", {"pairs": PAIRS, "options": {"top_k": 2}})
        assert code == 200
        want = [s.to_record() for s in scorer.score_many(PAIRS, top_k=2)]
        assert [r["boundary"] for r in body] == ["seq2seq"] * 3 and body[0]["id"] == "a"
        for got, exp in zip(body, want):
            assert got["token_ids"] == exp["token_ids"]
            assert got["logprob"] == pytest.approx(exp["logprob"], abs=1e-5)
        for request in ({"prompt": "copy: the cat", "echo": True, "logprobs": 1,
                         "max_tokens": 0}, {"prompt": "copy: the cat", "max_tokens": 3}):
            code, body, _ = post(srv.url + "/v1/completions", request)
            assert code == 422 and body["error"]["param"] == "prompt"
            assert "encoder-decoder" in body["error"]["message"]
            assert "/v1/score" in body["error"]["message"]


@pytest.mark.slow
def test_lm_eval_loglikelihood_and_generation_on_a_seq2seq_scorer(tmp_path, torch_threads):
    pytest.importorskip("lm_eval")
    from loglik.errors import ConfigError
    from loglik.lmeval import LoglikLM

    from .test_lmeval import GEN, LL, evaluate, per_sample, write_tasks

    tok = TOKENIZER["t5"]()   # this T5 generates text (the tiny BARTs end at once)
    scorer = Scorer.from_seq2seq(tiny_seq2seq("t5", tok, seed=2), tok)
    tasks = write_tasks(tmp_path / "tasks")
    out = evaluate(LoglikLM(scorer, max_gen_toks=6), None, tasks, tasks=["lt_ll", "lt_gen"])
    got = per_sample(out, "lt_ll")
    for doc, row in enumerate(LL):
        s = scorer.score(row["context"], row["continuation"])
        assert got[doc][0][0] == pytest.approx(s.logprob, abs=1e-4)
        assert got[doc][0][1] == all(s.token_greedy)
    # generation: the decoder's greedy target from the prompt in the encoder, cut at "."
    model, tok = scorer.backend.model, scorer.tokenizer.hf
    gen = per_sample(out, "lt_gen")
    for doc, row in enumerate(GEN):
        enc = scorer.encode(row["q"], "")
        with torch.no_grad():
            ids = model.generate(input_ids=torch.tensor([enc.context_ids]), max_new_tokens=6,
                                 do_sample=False)[0, 1:]
        want = tok.decode(ids, skip_special_tokens=True).split(".")[0].split("\n")[0]
        assert gen[doc][0] == want
    assert any(gen[d][0] for d in gen)       # the check is not on empty strings only
    from lm_eval.api.instance import Instance

    with pytest.raises(ConfigError, match="loglikelihood_rolling.*lone text"):
        LoglikLM(scorer).loglikelihood_rolling([Instance("loglikelihood_rolling", {},
                                                         ("some text",), 0)])


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(480)
def test_ray_scores_seq2seq_pairs_and_conversations(bart, tmp_path, local_ray):
    import pyarrow.parquet as pq

    from loglik.distributed import score_on_ray

    from .test_chat import CONV
    from .test_chat_commands import _chatml_model_folder

    folder, scorer = bart
    (tmp_path / "pairs").mkdir()
    (tmp_path / "pairs" / "p.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    score_on_ray(str(tmp_path / "pairs"), str(tmp_path / "o1"), scorer=folder, num_actors=1,
                 progress=False)
    rows = pq.read_table(tmp_path / "o1" / "p.parquet").to_pylist()
    want = scorer.score_many(read_examples(str(tmp_path / "pairs")))
    assert [r["token_ids"] for r in rows] == [w.token_ids for w in want]
    assert [r["logprob"] for r in rows] == pytest.approx([w.logprob for w in want], abs=1e-4)

    chat = _chatml_model_folder(tmp_path / "chat-model", scale=10.0)
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "c.jsonl").write_text(
        json.dumps({"id": "c1", "messages": CONV}) + "\n" +
        json.dumps({"id": "c2", "messages": CONV[:3]}) + "\n")
    score_on_ray(str(tmp_path / "chats"), str(tmp_path / "o2"), scorer=str(chat), num_actors=1,
                 progress=False, scorer_options={"turns": "all"})
    rows = pq.read_table(tmp_path / "o2" / "c.parquet").to_pylist()
    want = Scorer.from_pretrained(str(chat), turns="all").score_many(
        read_examples(str(tmp_path / "chats")))
    assert [r["boundary"] for r in rows] == ["chat", "chat"]
    assert [r["turns"] for r in rows] == [w.to_record()["turns"] for w in want]
    assert len(rows[0]["turns"]) >= 2 and all(w.num_tokens > 0 for w in want)
    assert [r["logprob"] for r in rows] == pytest.approx([w.logprob for w in want], abs=1e-4)
