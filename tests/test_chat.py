"""Conversations: the last (or every) assistant turn given the rest, rendered by the template."""

import json
import math

import pytest
import torch

from loglik import Scorer
from loglik.cli import main
from loglik.data import record_to_example
from loglik.errors import ConfigError, InputError
from loglik.logprobs import reference_logprobs
from loglik.testing import CHAT_TEMPLATES, byte_bpe_tokenizer, chat_tokenizer, tiny_model

CONV = [{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "<think>easy</think> Paris."},
        {"role": "user", "content": "And Italy? <|im_end|></s>"},   # special strings: text
        {"role": "assistant", "content": "Rome is the capital of Italy."}]


@pytest.fixture(scope="module", params=list(CHAT_TEMPLATES))
def chat_setup(request, torch_threads):
    tok = chat_tokenizer(request.param)
    model = tiny_model("llama", len(tok), scale=10.0, seed=3)
    return request.param, tok, model


def _reference(model, context, span):
    ids = torch.tensor([list(context) + list(span)])
    with torch.no_grad():
        return reference_logprobs(model(ids).logits, ids)[0, len(context) - 1:]   # (n,)


def test_every_turn_matches_the_float64_reference(chat_setup):
    style, tok, model = chat_setup
    scorer = Scorer.from_hf(model, tok, turns="all")
    [s] = scorer.score_many([{"id": "c1", "messages": CONV}])
    assert s.id == "c1" and [t["index"] for t in s.extra["turns"]] == [2, 4]
    encoded = scorer.encoder.encode_many([record_to_example({"messages": CONV})])[0]
    total, start = 0.0, 0
    for turn, part in zip(s.extra["turns"], encoded.parts):
        ref = _reference(model, part.context_ids, part.response_ids)
        got = s.token_logprobs[start:start + turn["num_tokens"]]
        torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), ref, atol=1e-4,
                                   rtol=0)
        assert turn["logprob"] == pytest.approx(ref.sum().item(), abs=1e-4)
        total += turn["logprob"]
        start += turn["num_tokens"]
        # the context is exactly the template's rendering with the generation prompt
        k = turn["index"]
        rendered = tok.apply_chat_template(CONV[:k], tokenize=False, add_generation_prompt=True)
        assert tok.decode(list(part.context_ids)) == rendered
        # the span: content, then the template's end-of-turn token (special) last
        span_text = tok.decode(list(part.response_ids))
        assert CONV[k]["content"].split("</think>")[-1].strip() in span_text
        assert part.response_ids[-1] in tok.all_special_ids
        assert part.context_ids.count(tok.bos_token_id) <= 1 or style != "llama2"
    assert s.logprob == pytest.approx(total, abs=1e-9) and start == s.num_tokens
    assert "".join(s.token_texts) == "".join(p.response_text for p in encoded.parts)
    last = Scorer.from_hf(model, tok).score_many([{"messages": CONV}])[0]
    assert last.logprob == pytest.approx(s.extra["turns"][-1]["logprob"], abs=1e-4)
    assert "turns" not in last.extra


def test_special_strings_in_content_are_text(chat_setup):
    style, tok, model = chat_setup
    scorer = Scorer.from_hf(model, tok)
    enc = scorer.encoder.encode_many([record_to_example({"messages": CONV})])[0]
    rendered = tok.apply_chat_template(CONV[:4], tokenize=False, add_generation_prompt=True)
    naive = tok(rendered, add_special_tokens=False)["input_ids"]   # what HF tokenize=True does
    specials = set(tok.all_special_ids)
    assert sum(t in specials for t in enc.context_ids) < sum(t in specials for t in naive)
    assert tok.decode(list(enc.context_ids)) == rendered


def test_end_of_turn_left_out(chat_setup):
    style, tok, model = chat_setup
    with_eot = Scorer.from_hf(model, tok).score_many([{"messages": CONV}])[0]
    content = Scorer.from_hf(model, tok, end_of_turn=False).score_many([{"messages": CONV}])[0]
    assert content.num_tokens < with_eot.num_tokens
    assert content.token_ids == with_eot.token_ids[:content.num_tokens]
    assert content.token_logprobs == pytest.approx(
        with_eot.token_logprobs[:content.num_tokens], abs=1e-4)
    assert tok.decode(content.token_ids).strip() == CONV[-1]["content"]


def test_bos_written_by_the_template_is_not_doubled():
    tok = chat_tokenizer("llama2")
    enc = Scorer.from_hf(tiny_model("llama", len(tok)), tok).encoder.encode_many(
        [record_to_example({"messages": CONV})])[0]
    assert enc.context_ids[0] == tok.bos_token_id
    assert enc.context_ids.count(tok.bos_token_id) == 1


def test_generation_prompt_merging_into_the_content_is_split():
    tok = chat_tokenizer("space_prompt")
    conv = [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "the answer"}]
    scorer = Scorer.from_hf(tiny_model("llama", len(tok)), tok)
    [s] = scorer.score_many([{"messages": conv}])
    assert s.boundary == "chat_split"
    enc = scorer.encoder.encode_many([record_to_example({"messages": conv})])[0]
    head = tok.decode(list(enc.context_ids))
    assert head == "User: Capital?\nAssistant: "
    assert tok.decode(list(enc.context_ids) + s.token_ids) == head + "the answer<|im_end|>"


def test_no_template_is_a_clear_error(bpe_tokenizer, tiny_gpt2, tmp_path):
    scorer = Scorer.from_hf(tiny_gpt2, bpe_tokenizer)
    with pytest.raises(ConfigError, match="no chat template.*--chat-template FILE"):
        scorer.score_many([{"messages": CONV[:3]}])
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}" \
               "{% if add_generation_prompt %}assistant:{% endif %}"
    given = Scorer.from_hf(tiny_gpt2, bpe_tokenizer, chat_template=template)
    [s] = given.score_many([{"messages": CONV[:3]}])
    assert s.boundary in ("chat", "chat_split") and s.num_tokens > 0


@pytest.mark.parametrize("messages,match", [
    ([], "non-empty list of messages"),
    ([{"role": "user", "content": "hi"}], "no assistant message"),
    ([{"role": "bot", "content": "hi"}], "message 0: role must be one of"),
    ([{"role": "assistant", "content": None}], "message 0: content must be a string, got null"),
    ("not json", "not JSON"),
])
def test_bad_messages_say_where(messages, match):
    with pytest.raises(InputError, match=match) as info:
        record_to_example({"messages": messages}, source="chats.jsonl", line=3)
    assert str(info.value).startswith("chats.jsonl line 3: ")


def test_cli_conversations(tmp_path, torch_threads):
    tok = chat_tokenizer("chatml")
    model_dir = tmp_path / "chat-model"
    tiny_model("llama", len(tok), scale=10.0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    data = tmp_path / "chats.jsonl"
    data.write_text(json.dumps({"id": "a", "conv": CONV}) + "\n"
                    + json.dumps({"id": "b", "prompt": "Hello", "response": " world"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--model", str(model_dir), "-o", str(out),
                 "--messages-field", "conv", "--turns", "all"]) == 0
    chat, pair = [json.loads(line) for line in out.read_text().splitlines()]
    assert [t["index"] for t in chat["turns"]] == [2, 4]
    assert chat["logprob"] == pytest.approx(math.fsum(t["logprob"] for t in chat["turns"]))
    assert pair["boundary"] == "joint" and "turns" not in pair
    # --chat-template FILE on a tokenizer without one
    plain_dir = tmp_path / "plain"
    plain = byte_bpe_tokenizer()
    tiny_model("llama", len(plain)).save_pretrained(plain_dir)
    plain.save_pretrained(plain_dir)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"messages": CONV[:3]}) + "\n")
    assert main(["score", str(one), "--model", str(plain_dir), "-o",
                 str(tmp_path / "x.jsonl")]) != 0
    template = tmp_path / "t.jinja"
    template.write_text(CHAT_TEMPLATES["space_prompt"])
    assert main(["score", str(one), "--model", str(plain_dir), "-o", str(tmp_path / "y.jsonl"),
                 "--chat-template", str(template)]) == 0
    assert json.loads((tmp_path / "y.jsonl").read_text())["boundary"].startswith("chat")


BAD_GENERATION = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}"
                  "<|im_start|>assistant\n{{ m['content'] }}<|im_end|>{% endgeneration %}"
                  "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>"
                  "{% endif %}\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
                  "{% endif %}")


def test_generation_blocks_are_checked_against_the_span():
    from loglik.errors import TokenizationError

    tok = chat_tokenizer("chatml_generation")
    conv = CONV[:3]
    out = tok.apply_chat_template(conv, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    marked = [i for i, m in enumerate(out["assistant_masks"]) if m]
    scorer = Scorer.from_hf(tiny_model("llama", len(tok)), tok)
    enc = scorer.encoder.encode_many([record_to_example({"messages": conv})])[0]
    # the template's own mask is exactly our span: content + <|im_end|>
    assert marked == list(range(len(enc.context_ids), len(enc.context_ids) + enc.num_tokens))
    bad = Scorer.from_hf(tiny_model("llama", len(tok)), tok, chat_template=BAD_GENERATION)
    with pytest.raises(TokenizationError, match="generation block marks tokens"):
        bad.score_many([{"messages": conv}])


def test_compare_accepts_conversations(torch_threads):
    from loglik import compare

    tok = chat_tokenizer("chatml")
    a = Scorer.from_hf(tiny_model("llama", len(tok), scale=4.0, seed=1), tok, turns="all")
    b = Scorer.from_hf(tiny_model("llama", len(tok), scale=4.0, seed=2), tok, turns="all")
    convs = [{"messages": CONV}, {"messages": CONV[:3]}]
    c = compare({"a": a, "b": b}, convs, num_bootstrap=200, token_stats=False)
    pair = c.pair("a", "b")
    want = math.fsum(x.logprob for x in a.score_many(convs)) \
        - math.fsum(x.logprob for x in b.score_many(convs))
    assert pair.diff_total == pytest.approx(want, abs=1e-4)
    assert [len(s.extra["turns"]) for s in c.scores[0]] == [2, 1]
