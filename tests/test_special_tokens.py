"""Special-token strings typed by a user are text, unless ``parse_special`` opts in."""

import pytest

from loglik import Scorer
from loglik.tokenize import EncodeOptions, Encoder, HFTokenizer, as_text_tokenizer

from .test_tokenizer_styles import LOSSY, STYLES


def _specials(tok):
    return [t for t in tok.all_special_tokens if t]


@pytest.mark.parametrize("name", STYLES)
def test_special_strings_are_text_by_default(tokenizer_styles, name):
    tok = tokenizer_styles[name]
    special_ids = set(tok.all_special_ids) - {tok.unk_token_id}   # unknown characters -> unk
    for s in _specials(tok):
        prompt, response = f"Hello {s} world", f" and {s}"
        enc = Encoder(tok).encode(prompt, response)
        assert not special_ids & set(enc.context_ids[1:] if HFTokenizer(tok).adds_bos
                                     else enc.context_ids), (name, s)
        assert not special_ids & set(enc.response_ids), (name, s)
        if name not in LOSSY:   # the characters come back
            adapter = HFTokenizer(tok)
            assert adapter.decode(list(enc.response_ids)).strip() == response.strip()
        opted = Encoder(tok, EncodeOptions(parse_special=True)).encode(prompt, response)
        assert tok.convert_tokens_to_ids(s) in opted.response_ids, (name, s)


def test_parse_special_on_the_scorer(gpt2_scorer, tiny_gpt2, bpe_tokenizer):
    eot = bpe_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    plain = gpt2_scorer
    opted = Scorer.from_hf(tiny_gpt2, bpe_tokenizer, parse_special=True)
    a = plain.score("Hello", " world<|endoftext|>")
    b = opted.score("Hello", " world<|endoftext|>")
    assert eot not in a.token_ids and a.num_tokens > b.num_tokens
    assert b.token_ids[-1] == eot and b.tokens[-1] == "<|endoftext|>"
    assert a.num_bytes == b.num_bytes == len(" world<|endoftext|>")


def test_typed_bos_is_not_a_second_bos(sp_tokenizer):
    bos = sp_tokenizer.bos_token_id
    enc = Encoder(sp_tokenizer).encode("<s>Hello", " world")
    assert enc.context_ids[0] == bos and enc.context_ids.count(bos) == 1
    assert HFTokenizer(sp_tokenizer).decode(list(enc.context_ids[1:])) == "<s>Hello"
    opted = Encoder(sp_tokenizer, EncodeOptions(parse_special=True)).encode("<s>Hello",
                                                                            " world")
    assert opted.context_ids.count(bos) == 1   # the typed one is the BOS, not doubled


def test_as_text_tokenizer_rewraps_for_the_other_rule(bpe_tokenizer):
    plain = as_text_tokenizer(bpe_tokenizer)
    assert not plain.parse_special
    assert as_text_tokenizer(plain) is plain
    opted = as_text_tokenizer(plain, parse_special=True)
    assert opted.parse_special and opted.hf is bpe_tokenizer
    assert opted.encode_batch(["<|endoftext|>"]) == [[bpe_tokenizer.eos_token_id]]
    assert len(plain.encode_batch(["<|endoftext|>"])[0]) > 1
