"""Conversations through choose, explain and train: the same span and numbers as score."""

import json
import math

import pytest
import torch

import loglik
from loglik import Scorer
from loglik.choices import choose
from loglik.cli import main
from loglik.errors import ConfigError, InputError
from loglik.objective import collate, conditional_nll
from loglik.testing import chat_tokenizer, tiny_model
from loglik.tokenize import EncodeOptions, Encoder
from loglik.train_data import load_examples

from .test_chat import CONV

HISTORY = [{"role": "system", "content": "Be brief."},
           {"role": "user", "content": "Capital of France?"}]
CANDIDATES = ["Paris.", "Rome, of course.", "<|im_end|> Lyon"]   # a special string is text


@pytest.fixture(scope="module", params=["chatml", "llama2", "reasoning"])
def chat(request, torch_threads):
    tok = chat_tokenizer(request.param)
    return tok, tiny_model("llama", len(tok), scale=10.0, seed=4)


def test_choose_equals_scoring_each_candidate_conversation(chat):
    tok, model = chat
    scorer = Scorer.from_hf(model, tok)
    rows = [{"messages": HISTORY, "choices": CANDIDATES, "gold": 0},
            {"context": "The capital of France is", "choices": [" Paris", " Rome"], "gold": 0}]
    result = choose(scorer, rows, neutral_prompt="Say something.")
    conv = result.rows[0]
    for c, lp, nt, nb in zip(CANDIDATES, conv.logprobs, conv.num_tokens, conv.num_bytes):
        alone = scorer.score_many(
            [{"messages": HISTORY + [{"role": "assistant", "content": c}]}])[0]
        assert lp == pytest.approx(alone.logprob, abs=1e-4)
        assert (nt, nb) == (alone.num_tokens, alone.num_bytes)
        neutral = scorer.score_many([{"messages": [
            {"role": "user", "content": "Say something."},
            {"role": "assistant", "content": c}]}])[0]
        i = CANDIDATES.index(c)
        assert conv.logprobs_neutral[i] == pytest.approx(neutral.logprob, abs=1e-4)
    assert conv.picks["sum"] == max(range(3), key=lambda i: conv.logprobs[i])
    # the text row beside it is scored as before
    text = result.rows[1]
    assert text.logprobs[0] == pytest.approx(scorer.score("The capital of France is",
                                                          " Paris").logprob, abs=1e-4)


def test_choose_conversation_errors(torch_threads):
    tok = chat_tokenizer("chatml")
    model = tiny_model("llama", len(tok))
    with pytest.raises(InputError, match=r'missing field "context" \(or "messages"'):
        choose(Scorer.from_hf(model, tok), [{"choices": ["a"]}])
    with pytest.raises(ConfigError, match="--turns all"):
        choose(Scorer.from_hf(model, tok, turns="all"),
               [{"messages": HISTORY, "choices": ["a"]}])


def test_explain_a_conversation(chat):
    tok, model = chat
    scorer = Scorer.from_hf(model, tok)
    expl = scorer.explain(messages=CONV, top_k=3)
    score = scorer.score_many([{"messages": CONV}])[0]
    assert [r.token_id for r in expl.rows] == score.token_ids
    assert expl.logprob == pytest.approx(score.logprob, abs=1e-9)
    assert expl.rows[-1].cumulative == expl.logprob
    assert expl.rows[-1].token_id in tok.all_special_ids   # the end-of-turn token, explained
    assert expl.to_dict()["messages"] == CONV and expl.boundary.startswith("chat")
    with pytest.raises(ConfigError, match="not both"):
        scorer.explain("a", "b", messages=CONV)
    from loglik.render.terminal import explanation_table

    caption = explanation_table(expl, width=100).table.caption
    assert caption.startswith("log Pr(assistant turn | conversation before it) = ")


def test_messages_arg_reads_one_record_and_refuses_several(tmp_path):
    from loglik.reports import read_messages_arg

    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"messages": CONV}) + "\n")
    assert read_messages_arg(str(one)) == CONV
    assert read_messages_arg(json.dumps(CONV)) == CONV
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps({"messages": CONV}) + "\n" for _ in range(3)))
    with pytest.raises(InputError, match="holds 3 JSON lines"):
        read_messages_arg(str(many))


def _chatml_model_folder(folder, *, scale: float):
    """A save_pretrained folder: a tiny random Llama with the ChatML test tokenizer."""
    tok = chat_tokenizer("chatml")
    tiny_model("llama", len(tok), scale=scale, seed=4).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_cli_choose_and_explain_conversations(tmp_path, torch_threads):
    folder = _chatml_model_folder(tmp_path / "m", scale=10.0)
    tok = chat_tokenizer("chatml")
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"id": "q1", "conv": HISTORY, "choices": CANDIDATES,
                                "gold": 1}) + "\n")
    out = tmp_path / "picks.jsonl"
    assert main(["choose", str(rows), "--model", str(folder), "--messages-field", "conv",
                 "-o", str(out), "--json"]) == 0
    rec = json.loads(out.read_text())
    scorer = Scorer.from_hf(tiny_model("llama", len(tok), scale=10.0, seed=4), tok)
    want = [scorer.score_many([{"messages": HISTORY + [{"role": "assistant", "content": c}]}]
                              )[0].logprob for c in CANDIDATES]
    assert rec["id"] == "q1" and rec["logprobs"] == pytest.approx(want, abs=1e-4)
    conv = tmp_path / "conv.json"
    conv.write_text(json.dumps({"messages": CONV}))
    expl = tmp_path / "expl.json"
    with open(expl, "w") as handle:
        import contextlib

        with contextlib.redirect_stdout(handle):
            assert main(["explain", "--messages", str(conv), "--model", str(folder),
                         "--json"]) == 0
    got = json.loads(expl.read_text())
    assert got["logprob"] == pytest.approx(scorer.score_many([{"messages": CONV}])[0].logprob,
                                           abs=1e-4)
    assert main(["explain", "a", "--model", str(folder)]) != 0   # half a pair: a clear error


@pytest.mark.parametrize("end_of_turn", [True, False])
def test_training_loss_is_minus_the_scored_turns(chat, tmp_path, end_of_turn):
    tok, model = chat
    data = tmp_path / "chats.jsonl"
    convs = [CONV, CONV[:3], HISTORY + [{"role": "assistant", "content": "Paris."}]]
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in convs))
    encoder = Encoder(tok, EncodeOptions(turns="all", end_of_turn=end_of_turn))
    rows = load_examples(str(data), encoder)
    assert len(rows) == 4                                   # one row per assistant turn
    with torch.no_grad():
        loss = conditional_nll(model, collate(rows, pad_id=0), reduction="sum").item()
    scored = Scorer.from_hf(model, tok, turns="all", end_of_turn=end_of_turn).score_many(
        [{"messages": c} for c in convs])
    total = math.fsum(s.logprob for s in scored)
    assert loss == pytest.approx(-total, abs=1e-3, rel=1e-6)
    assert sum(len(r.response_ids) for r in rows) == sum(s.num_tokens for s in scored)


@pytest.mark.slow
def test_train_on_chats_cli(tmp_path, torch_threads):
    folder = _chatml_model_folder(tmp_path / "m", scale=4.0)
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in (CONV, CONV[:3])))
    out = tmp_path / "ft"
    result = loglik.train(str(data), model=str(folder), output_dir=str(out), epochs=1,
                          lr=1e-3, threads=1, quiet=True)
    after = Scorer.from_pretrained(str(out), turns="all").score_many(
        [{"messages": c} for c in (CONV, CONV[:3])])
    assert result.epochs[-1]["train"]["num_examples"] == 3   # 2 + 1 assistant turns
    assert result.epochs[-1]["train"]["logprob"] == pytest.approx(
        math.fsum(s.logprob for s in after), abs=1e-4)
