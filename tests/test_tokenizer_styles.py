"""The boundary guarantee and special-token rule on every tokenizer style real models ship with.

A ``split`` response's tokens, decoded after the prompt's, continue the prompt's decode with
exactly the response text (checked as a continuation: decoding the response ids alone would
lose a leading ``▁``). Where a tokenizer's decode is lossy, no tokenization can keep that
guarantee and the error names the tokenizer's fault.
"""

import pytest

from loglik.errors import TokenizationError
from loglik.tokenize import EncodeOptions, Encoder, HFTokenizer, move_whitespace
from loglik.types import Example

from .test_tokenize import ADVERSARIAL

STYLES = ["byte_bpe", "sentencepiece", "no_bos", "llama2", "metaspace_always",
          "prefix_space_bpe", "wordpiece", "lossy"]
LOSSY = {"wordpiece", "lossy"}


def _continues(tok, prompt_ids, response_ids, response_text):
    adapter = HFTokenizer(tok)
    head = adapter.decode(prompt_ids)
    return adapter.decode(list(prompt_ids) + list(response_ids)) == head + response_text


@pytest.mark.parametrize("name", STYLES)
@pytest.mark.parametrize("prompt,response", ADVERSARIAL)
def test_boundary_on_every_style(tokenizer_styles, name, prompt, response):
    tok = tokenizer_styles[name]
    adapter = HFTokenizer(tok)
    moved_prompt, moved_response = move_whitespace(prompt, response)
    if not moved_prompt and tok.bos_token_id is None and tok.eos_token_id is None:
        pytest.skip("an empty prompt needs BOS or EOS, which this tokenizer lacks")
    try:
        enc = Encoder(tok).encode_many([Example(prompt, response, source="in.jsonl",
                                                line=7)])[0]
    except TokenizationError as exc:
        # only a tokenizer that cannot reproduce the text may refuse, and it is blamed
        assert name in LOSSY, f"{name} refused {prompt!r}+{response!r}: {exc}"
        assert str(exc).startswith("in.jsonl line 7: ")
        assert "fault of the tokenizer" in str(exc)
        return
    assert enc.response_text == moved_response
    assert bool(enc.response_ids) == bool(moved_response)
    prompt_ids = adapter.encode_batch([moved_prompt])[0]
    if enc.boundary == "joint":
        joint = adapter.encode_batch([moved_prompt + moved_response])[0]
        assert prompt_ids + list(enc.response_ids) == joint
    else:
        assert _continues(tok, prompt_ids, enc.response_ids, moved_response), (
            tok.convert_ids_to_tokens(list(enc.response_ids)))
    bos = tok.bos_token_id
    if moved_prompt and bos is not None:
        assert (enc.context_ids[0] == bos) == adapter.adds_bos
        assert enc.context_ids[1:2] != (bos,)
    if bos is not None and not enc.eos_scored:
        assert bos not in enc.response_ids


@pytest.mark.parametrize("name", [s for s in STYLES if s not in LOSSY])
def test_round_tripping_styles_keep_every_adversarial_split(tokenizer_styles, name):
    """No refusals at all on the tokenizers whose decode round-trips."""
    tok = tokenizer_styles[name]
    pairs = [Example(p, r) for p, r in ADVERSARIAL if p or tok.bos_token_id is not None
             or tok.eos_token_id is not None]
    encoded = Encoder(tok).encode_many(pairs)
    assert len(encoded) == len(pairs)
    assert {e.boundary for e in encoded} <= {"joint", "split"}


def test_lossy_decoder_is_named_as_the_tokenizers_fault(tokenizer_styles):
    tok = tokenizer_styles["lossy"]
    with pytest.raises(TokenizationError, match="decode is lossy.*fault of the tokenizer"):
        Encoder(tok).encode("Ans", "wer")


def test_dropped_whitespace_is_not_an_empty_slice(tokenizer_styles):
    tok = tokenizer_styles["wordpiece"]
    with pytest.raises(TokenizationError, match="no tokens for the response"):
        Encoder(tok).encode("Hello", "   ")


def test_split_on_sentencepiece_styles_has_no_dummy_prefix(tokenizer_styles):
    for name in ("sentencepiece", "llama2", "metaspace_always"):
        tok = tokenizer_styles[name]
        enc = Encoder(tok).encode("Ans", "wer")
        assert enc.boundary == "split", name
        assert not tok.convert_ids_to_tokens(list(enc.response_ids))[0].startswith("▁"), name


def test_prefix_space_bpe_same_tokens_with_and_without_space(tokenizer_styles):
    tok = tokenizer_styles["prefix_space_bpe"]
    a = Encoder(tok).encode("The capital of France is", " Paris")
    b = Encoder(tok, EncodeOptions(whitespace="keep")).encode("The capital of France is ",
                                                              "Paris")
    assert a.response_text == " Paris" and b.response_text == "Paris"
    assert _continues(tok, list(a.context_ids[1:]), a.response_ids, " Paris")
