"""Boundary and BOS rules on three tokenizer styles, with adversarial prompt/response splits."""

import pytest

from loglik.errors import ConfigError, ContextLengthError
from loglik.tokenize import EncodeOptions, Encoder, HFTokenizer, move_whitespace
from loglik.types import Example

ADVERSARIAL = [
    ("Ans", "wer"),                          # a word split across the boundary
    ("The capital of France is ", "Paris"),  # trailing space
    ("The capital of France is", " Paris"),  # leading space
    ("Hello\n", "\nWorld"),                  # newlines both sides
    ("Hello world", "!"),                    # punctuation merge
    ("She said: \"Hello", ", world!\""),
    ("x", "..."),
    ("I love ", "🍕!"),                      # emoji (bytes/byte fallback)
    ("I love 🍕", "🍕"),                     # emoji on both sides
    ("东", "京是日本的首都。"),               # CJK split inside a multi-byte word
    ("", "Hello world"),                     # empty prompt
    ("Hello", ""),                           # empty response
    ("Hello", "   "),                        # whitespace-only response
    ("Hello ", " "),
    ("a", "\n\n"),
    ("https://example.", "com/path?query=value"),
    ("12,3", "45 people"),
    ("def add(a, b):\n    ", "return a + b"),
    ("tabs\t", "and\twords"),
]


def _decodes_exactly(tok, enc, prompt_text):
    """The response tokens, decoded after the prompt's, give exactly the response text."""
    adapter = HFTokenizer(tok)
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    head = adapter.decode(prompt_ids)
    return adapter.decode(prompt_ids + list(enc.response_ids)) == head + enc.response_text


@pytest.mark.parametrize("name", ["byte_bpe", "sentencepiece", "no_bos"])
@pytest.mark.parametrize("prompt,response", ADVERSARIAL)
def test_boundary_is_exact(tokenizers, name, prompt, response):
    tok = tokenizers[name]
    enc = Encoder(tok).encode(prompt, response)
    moved_prompt, moved_response = move_whitespace(prompt, response)
    assert enc.response_text == moved_response
    if moved_response:
        assert enc.response_ids, "a non-empty response must have tokens"
    else:
        assert enc.response_ids == ()
    assert _decodes_exactly(tok, enc, moved_prompt), (
        enc.boundary, tok.convert_ids_to_tokens(list(enc.response_ids)))
    if enc.boundary == "joint":   # canonical: prompt tokens + response tokens = joint tokens
        joint = tok(moved_prompt + moved_response, add_special_tokens=False)["input_ids"]
        prompt_ids = tok(moved_prompt, add_special_tokens=False)["input_ids"]
        assert prompt_ids + list(enc.response_ids) == joint
    # BOS: added only for the tokenizer that adds it, never doubled, never scored
    bos = tok.bos_token_id
    if name == "sentencepiece":
        assert enc.context_ids[0] == bos and enc.context_ids[1:2] != (bos,)
    if moved_prompt and name != "sentencepiece":
        assert bos is None or enc.context_ids[0] != bos
    assert bos is None or bos not in enc.response_ids


def test_word_split_across_boundary_falls_back_to_split(sp_tokenizer):
    enc = Encoder(sp_tokenizer).encode("Ans", "wer")
    assert enc.boundary == "split"
    # the continuation has no dummy-prefix space: it decodes to "wer", not " wer"
    assert "".join(sp_tokenizer.convert_ids_to_tokens(list(enc.response_ids)))[0] != "▁"


def test_empty_prompt_conditions_on_bos_or_eos(tokenizers):
    sp, bpe, nobos = tokenizers["sentencepiece"], tokenizers["byte_bpe"], tokenizers["no_bos"]
    assert Encoder(sp).encode("", "Hello").context_ids == (sp.bos_token_id,)
    assert Encoder(bpe).encode("", "Hello").context_ids == (bpe.bos_token_id,)
    assert Encoder(nobos).encode("", "Hello").context_ids == (nobos.eos_token_id,)
    never = Encoder(sp, EncodeOptions(bos="never"))
    assert never.encode("", "Hello").context_ids == (sp.bos_token_id,)


def test_bos_policies(sp_tokenizer, bpe_tokenizer):
    hello = tuple(sp_tokenizer("Hello", add_special_tokens=False)["input_ids"])
    bos = sp_tokenizer.bos_token_id
    assert Encoder(sp_tokenizer).encode("Hello", " world").context_ids == (bos, *hello)
    assert Encoder(sp_tokenizer, EncodeOptions(bos="never")).encode(
        "Hello", " world").context_ids == hello
    gpt_hello = tuple(bpe_tokenizer("Hello", add_special_tokens=False)["input_ids"])
    assert Encoder(bpe_tokenizer).encode("Hello", " world").context_ids == gpt_hello
    assert Encoder(bpe_tokenizer, EncodeOptions(bos="always")).encode(
        "Hello", " world").context_ids == (bpe_tokenizer.bos_token_id, *gpt_hello)


def test_bos_never_doubled_when_prompt_starts_with_it(sp_tokenizer):
    enc = Encoder(sp_tokenizer, EncodeOptions(bos="always")).encode("<s>Hello", " world")
    assert enc.context_ids.count(sp_tokenizer.bos_token_id) == 1


def test_always_without_bos_token_is_a_config_error(nobos_tokenizer):
    with pytest.raises(ConfigError, match="needs a BOS token"):
        Encoder(nobos_tokenizer, EncodeOptions(bos="always"))


def test_score_eos_appends_eos(sp_tokenizer):
    enc = Encoder(sp_tokenizer, EncodeOptions(score_eos=True)).encode("Hello", " world")
    assert enc.response_ids[-1] == sp_tokenizer.eos_token_id and enc.eos_scored


@pytest.mark.parametrize("whitespace", ["move", "keep"])
def test_empty_response_stays_empty(tokenizers, whitespace):
    for tok in tokenizers.values():
        enc = Encoder(tok, EncodeOptions(whitespace=whitespace)).encode("x = ", "")
        assert (enc.response_ids, enc.response_text, enc.boundary) == ((), "", "joint")
    assert move_whitespace("x =  \n", "") == ("x =  \n", "")


def test_whitespace_keep(bpe_tokenizer):
    enc = Encoder(bpe_tokenizer, EncodeOptions(whitespace="keep")).encode("Hello ", "world")
    assert enc.response_text == "world"


def test_context_overflow_is_an_error_naming_the_record(sp_tokenizer):
    enc = Encoder(sp_tokenizer, max_length=5)
    ex = Example("The capital of France is", " Paris", source="in.jsonl", line=3)
    with pytest.raises(ContextLengthError, match=r"in.jsonl line 3: .*--truncate left"):
        enc.encode_many([ex])


def test_left_truncation_keeps_bos_and_reports_count(sp_tokenizer):
    full = Encoder(sp_tokenizer).encode("The capital of France is", " Paris")
    limit = 5
    enc = Encoder(sp_tokenizer, EncodeOptions(truncate="left"), max_length=limit).encode(
        "The capital of France is", " Paris")
    assert enc.context_ids[0] == sp_tokenizer.bos_token_id
    assert len(enc.context_ids) + len(enc.response_ids) - 1 == limit
    assert enc.truncated_tokens == len(full.context_ids) - len(enc.context_ids)
    assert enc.context_ids[1:] == full.context_ids[-(len(enc.context_ids) - 1):]
    assert enc.response_ids == full.response_ids


def test_response_alone_too_long(sp_tokenizer):
    enc = Encoder(sp_tokenizer, EncodeOptions(truncate="left"), max_length=3)
    with pytest.raises(ContextLengthError, match="response alone"):
        enc.encode("Hi", " The capital of France is Paris")


@pytest.mark.parametrize("name,prompt,response,pieces", [
    # byte-level BPE splits both emoji over several tokens: the completing token carries each
    ("byte_bpe", "I love ", "🦜🧬 ok", [" ", "", "🦜", "", "", "🧬", " ", "ok"]),
    ("byte_bpe", "The capital of France is ", "Paris.", [" ", "Par", "is", "."]),
    # SentencePiece byte fallback: one token per UTF-8 byte
    ("sentencepiece", "x", "ÿ Ω", ["", "ÿ", " ", "", "Ω"]),
    ("sentencepiece", "", "Hello world", ["", "Hel", "lo", " wor", "l", "d"]),
])
def test_token_texts_by_hand(tokenizers, name, prompt, response, pieces):
    from loglik.tokenize import token_texts

    enc = Encoder(tokenizers[name], EncodeOptions(), None)
    e = enc.encode(prompt, response)
    assert token_texts(enc.tok, e) == pieces


@pytest.mark.parametrize("name", ["byte_bpe", "sentencepiece", "no_bos"])
@pytest.mark.parametrize("score_eos", [False, True])
def test_token_texts_concatenate_to_the_scored_text(tokenizers, name, score_eos):
    from loglik.tokenize import token_texts

    enc = Encoder(tokenizers[name], EncodeOptions(score_eos=score_eos), None)
    for prompt, response in [("Ans", "wer"), ("", " lead"), ("Hello", ""), ("a", " 日本語\t\r\n"),
                             ("def f():\n    ", "return 1\n"), ("x", "𝔘 ÿ Ωμέγα 🍕!")]:
        e = enc.encode(prompt, response)
        pieces = token_texts(enc.tok, e)
        assert len(pieces) == len(e.response_ids)
        assert "".join(pieces) == e.response_text
        if score_eos:
            assert pieces[-1] == ""
