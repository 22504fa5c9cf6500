"""``on_error``: one record the tokenizer cannot score exactly must not end a run of a million."""

import json
import math

import pytest

from loglik import Scorer
from loglik.cli import main
from loglik.errors import ConfigError, TokenizationError
from loglik.types import FailedRecord


@pytest.fixture(scope="module")
def lossy_scorer(tokenizer_styles, torch_threads):
    from loglik.testing import tiny_model

    tok = tokenizer_styles["lossy"]
    return Scorer.from_hf(tiny_model("llama", len(tok), scale=10.0), tok)


ROWS = [{"id": "a", "prompt": "The capital of France is", "response": " Paris"},
        {"id": "b", "prompt": "Ans", "response": "wer"},          # lossy decode: cannot split
        {"id": "c", "prompt": "The dog", "response": " sleeps"}]


def test_stop_raises_naming_the_tokenizer(lossy_scorer):
    with pytest.raises(TokenizationError, match="<python> line 2: .*fault of the tokenizer"):
        lossy_scorer.score_many(ROWS)


def test_record_keeps_the_place_and_scores_the_rest(lossy_scorer):
    out = lossy_scorer.score_many(ROWS, on_error="record")
    assert [type(o).__name__ for o in out] == ["Score", "FailedRecord", "Score"]
    assert out[1] == FailedRecord("b", out[1].error) and "decode is lossy" in out[1].error
    assert out[1].to_record() == {"id": "b", "error": out[1].error}
    alone = lossy_scorer.score_many([ROWS[0], ROWS[2]])
    for got, ref in zip([out[0], out[2]], alone):
        assert got.token_ids == ref.token_ids
        assert math.isclose(got.logprob, ref.logprob, abs_tol=1e-4)


def test_on_error_must_be_known(lossy_scorer):
    with pytest.raises(ConfigError, match="on_error"):
        lossy_scorer.score_many(ROWS, on_error="skip")


def test_cli_on_error_record(tmp_path, tiny_model_dir, capsys):
    rows = [{"id": 1, "prompt": "Hello", "response": " world"},
            {"id": 2, "prompt": "word " * 400, "response": " x"},   # longer than the context
            {"id": 3, "prompt": "The dog", "response": " sleeps."}]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["score", str(data), "--model", tiny_model_dir, "-o", str(out),
                 "--on-error", "record"]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in recs] == [1, 2, 3]
    assert set(recs[1]) == {"id", "error"} and "in.jsonl line 2" in recs[1]["error"]
    assert "logprob" in recs[0] and "logprob" in recs[2]
    assert "1 of 3 records could not be scored" in capsys.readouterr().err
    assert main(["score", str(data), "--model", tiny_model_dir, "-o",
                 str(tmp_path / "stop.jsonl")]) != 0
