"""Token ids in: records with prompt_ids/response_ids, ``Scorer.score_ids``, ``boundary="ids"``."""

import json

import pytest
import torch

from loglik.cli import main
from loglik.data import record_to_example
from loglik.errors import InputError
from loglik.logprobs import reference_logprobs
from loglik.tokenize import EncodeOptions, Encoder


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_score_ids_matches_float64_reference(llama_scorer, tiny_llama, sp_tokenizer):
    prompt = [sp_tokenizer.bos_token_id] + _ids(sp_tokenizer, "The capital of France is")
    response = _ids(sp_tokenizer, " Paris. The dog sleeps.")
    s = llama_scorer.score_ids(prompt, response)
    assert s.boundary == "ids" and s.token_ids == response
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        ref = reference_logprobs(tiny_llama(ids).logits, ids)[0, len(prompt) - 1:]
    torch.testing.assert_close(torch.tensor(s.token_logprobs, dtype=torch.float64), ref,
                               atol=1e-4, rtol=0)
    assert abs(s.logprob - ref.sum().item()) < 1e-4
    assert s.num_bytes == len(" Paris. The dog sleeps.") and s.num_chars == s.num_bytes


def test_ids_are_scored_as_given(llama_scorer, sp_tokenizer):
    """No BOS added (the text path adds it for this tokenizer): the ids say what is read."""
    prompt = _ids(sp_tokenizer, "Hello")
    enc = llama_scorer.encoder.encode_ids(
        record_to_example({"prompt_ids": prompt, "response_ids": _ids(sp_tokenizer, "x")}))
    assert list(enc.context_ids) == prompt
    always = Encoder(sp_tokenizer, EncodeOptions(bos="always"))
    ex = record_to_example({"prompt_ids": prompt, "response_ids": [5]})
    assert always.encode_ids(ex).context_ids == (sp_tokenizer.bos_token_id, *prompt)
    empty = record_to_example({"prompt_ids": [], "response_ids": [5]})
    assert always.encode_ids(empty).context_ids == (sp_tokenizer.bos_token_id,)
    eos = Encoder(sp_tokenizer, EncodeOptions(score_eos=True)).encode_ids(ex)
    assert eos.response_ids == (5, sp_tokenizer.eos_token_id)


def test_ids_record_equals_the_text_record_when_the_boundary_is_joint(llama_scorer):
    text = llama_scorer.score("The capital of France is", " Paris")
    assert text.boundary == "joint"
    enc = llama_scorer.encode("The capital of France is", " Paris")
    [by_ids] = llama_scorer.score_many([{"id": 7, "prompt_ids": list(enc.context_ids),
                                         "response_ids": list(enc.response_ids)}])
    assert by_ids.id == 7 and by_ids.token_ids == text.token_ids
    assert by_ids.logprob == pytest.approx(text.logprob, abs=1e-5)
    assert by_ids.num_bytes == text.num_bytes


@pytest.mark.parametrize("record,match", [
    ({"prompt_ids": [1, 2]}, 'missing field "response_ids"'),
    ({"prompt_ids": "1 2", "response_ids": [3]}, "must be a list of token ids, got str"),
    ({"prompt_ids": [1, -2], "response_ids": [3]}, "item 1 must be a non-negative integer"),
    ({"prompt_ids": [1, 2.5], "response_ids": [3]}, "item 1 must be a non-negative integer"),
    ({"prompt_ids": [1, True], "response_ids": [3]}, "item 1 must be a non-negative integer"),
])
def test_bad_id_records_say_where(record, match):
    with pytest.raises(InputError, match=match) as info:
        record_to_example(record, source="ids.jsonl", line=4)
    assert str(info.value).startswith("ids.jsonl line 4: ")


def test_id_outside_the_vocabulary(llama_scorer):
    ex = record_to_example({"prompt_ids": [1], "response_ids": [10 ** 6]}, source="x.jsonl",
                           line=2)
    with pytest.raises(InputError, match=r"x.jsonl line 2: token id 1000000 is outside"):
        llama_scorer.encoder.encode_ids(ex)


def test_cli_scores_id_records(tmp_path, tiny_model_dir, sp_tokenizer):
    rows = [{"id": "t", "prompt": "Hello", "response": " world"},
            {"id": "i", "prompt_ids": [1] + _ids(sp_tokenizer, "Hello"),
             "response_ids": _ids(sp_tokenizer, " world")}]
    data = tmp_path / "ids.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--model", tiny_model_dir, "-o", str(out)]) == 0
    text, ids = [json.loads(line) for line in out.read_text().splitlines()]
    assert ids["boundary"] == "ids" and ids["token_ids"] == text["token_ids"]
    assert ids["logprob"] == pytest.approx(text["logprob"], abs=1e-5)
