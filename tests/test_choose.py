"""Multiple choice: picks under each rule, accuracies and standard errors, input checks, CLI."""

from __future__ import annotations

import json
import math

import pytest

import loglik
from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.choices import (ChoiceResult, ChoiceRow, argmax, choose, compare_choices, picks,
                           record_to_row, summarize)
from loglik.cli import main
from loglik.errors import InputError


def test_each_rule_picks_by_its_own_normalisation():
    # choice 0: "東京都市" -6 nats, 3 tokens, 12 bytes, 4 chars; choice 1: "abcd" -4, 1, 4, 4
    got = picks([-6.0, -4.0], [3, 1], [12, 4], [4, 4], logprobs_neutral=[-7.0, -3.0])
    assert got == {
        "sum": 1,          # -4 > -6
        "per_token": 0,    # -2 > -4
        "per_byte": 0,     # -0.5 > -1
        "per_char": 1,     # -1 > -1.5 (lm-eval's acc_norm divides by characters)
        "mutual_info": 0,  # -6 + 7 = +1 > -4 + 3 = -1
    }
    assert "mutual_info" not in picks([-1.0], [1], [1], [1])


def test_argmax_ties_and_nan():
    assert argmax([-1.0, -1.0, -2.0]) == 0
    assert argmax([math.nan, -5.0]) == 1
    # an empty choice (0 bytes) never wins a normalised rule
    assert picks([0.0, -3.0], [0, 1], [0, 3], [0, 3])["per_byte"] == 1


def test_accuracy_and_standard_error_literal():
    rows = [ChoiceResult(None, [0.0], [1], [1], [1], None, {"sum": p}, gold)
            for p, gold in [(0, 0), (1, 1), (0, 0), (0, 1)]]
    s = summarize(rows + [ChoiceResult(None, [0.0], [1], [1], [1], None, {"sum": 0})])
    assert (s.num_rows, s.num_gold) == (5, 4)
    assert s.accuracy["sum"] == 0.75
    assert s.stderr["sum"] == pytest.approx(math.sqrt(0.75 * 0.25 / 3))   # 0.25
    assert s.to_dict()["rules"]["sum"] == {"accuracy": 0.75, "stderr": pytest.approx(0.25)}
    assert summarize([]).to_dict() == {"num_rows": 0, "num_gold": 0, "rules": {}}


def _fake():
    tok = WordTokenizer(["the", "cat", "sat", "dog", "barked"])
    # 0 <s> 1 </s> 2 the 3 " the" 4 cat 5 " cat" 6 sat 7 " sat" 8 dog 9 " dog"
    # 10 barked 11 " barked"
    lm = FakeBackend(len(tok), {
        (0, 2): {5: 0.4, 9: 0.2},              # after "the"
        (0, 2, 9): {11: 0.5},                  # after "the dog"
        (0,): {5: 0.5, 9: 0.1},                # neutral prompt "": after <s>
        (0, 9): {11: 0.5},
    })
    return tok, lm


def test_choose_fake_model_literal():
    tok, lm = _fake()
    r = choose(Scorer(lm, tok), [("the", [" cat", " dog barked"], 1)])
    (row,) = r.rows
    assert row.logprobs == pytest.approx([math.log(0.4), math.log(0.2 * 0.5)])
    assert row.logprobs_neutral == pytest.approx([math.log(0.5), math.log(0.1 * 0.5)])
    assert (row.num_tokens, row.num_bytes, row.num_chars) == ([1, 2], [4, 11], [4, 11])
    # sum: ln .4 > ln .1; per token: ln .4 = -0.92 < ln .1 / 2 = -1.15 -> 0
    # per byte: -0.229 vs -0.209 -> 1; MI: ln(.4/.5) = -0.22 < ln(.1/.05) = 0.69 -> 1
    assert row.picks == {"sum": 0, "per_token": 0, "per_byte": 1, "per_char": 1,
                         "mutual_info": 1}
    assert row.correct == {"sum": False, "per_token": False, "per_byte": True,
                           "per_char": True, "mutual_info": True}
    assert r.summary.accuracy["per_byte"] == 1.0 and math.isnan(r.summary.stderr["sum"])
    rec = row.to_record()
    assert rec["gold"] == 1 and rec["picks"]["sum"] == 0


def test_choose_matches_score_many_and_moves_whitespace(llama_scorer):
    rows = [{"context": "The capital of France is ", "choices": ["Paris", "Rome", "东京"],
             "gold": "Paris", "id": "q1"},
            ("The quick brown", [" fox", " dog"])]
    r = loglik.choose(llama_scorer, rows)
    direct = llama_scorer.score_many([("The capital of France is ", c)
                                      for c in ["Paris", "Rome", "东京"]])
    assert r.rows[0].logprobs == pytest.approx([s.logprob for s in direct], abs=1e-5)
    assert r.rows[0].id == "q1" and r.rows[0].gold == 0 and r.rows[1].gold is None
    # the neutral score is of the same text (" Paris", whitespace moved), after BOS
    neutral = llama_scorer.score("", " Paris")
    assert r.rows[0].logprobs_neutral[0] == pytest.approx(neutral.logprob, abs=1e-5)
    assert r.rows[0].num_bytes == [6, 5, 7]
    assert r.summary.num_gold == 1
    no_mi = choose(llama_scorer, rows, mutual_info=False)
    assert no_mi.rows[0].logprobs_neutral is None and "mutual_info" not in no_mi.rows[0].picks


def test_choices_equal_score_choices_per_row(llama_scorer):
    """One batched score_many over all rows gives Scorer.score_choices' numbers, row by row."""
    rows = [("The dog", [" sleeps", " barks"], 0), ("2 + 2 =", [" 4", " 5", " four"], 0),
            ("The dog", [" sleeps", " runs fast"], 1)]
    got = choose(llama_scorer, rows, mutual_info=False)
    for row, (context, choices, _) in zip(got.rows, rows):
        ref = llama_scorer.score_choices(context, choices)
        assert row.logprobs == pytest.approx([s.logprob for s in ref], abs=1e-4)
        assert row.num_tokens == [s.num_tokens for s in ref]


@pytest.mark.parametrize("record, message", [
    ({"choices": ["a"]}, 'missing field "context"'),
    ({"context": "q", "choices": "a"}, "non-empty list of strings"),
    ({"context": "q", "choices": []}, "non-empty list of strings"),
    ({"context": "q", "choices": ["a", "b"], "gold": 2}, "index from 0 to 1"),
    ({"context": "q", "choices": ["a", "b"], "gold": "c"}, "neither an index"),
    ({"context": 3, "choices": ["a"]}, "must be a string"),
])
def test_row_errors(record, message):
    with pytest.raises(InputError, match=message) as info:
        record_to_row(record, source="mc.jsonl", line=7)
    assert str(info.value).startswith("mc.jsonl line 7: ")


def test_row_gold_forms():
    assert record_to_row({"context": "q", "choices": ["a", "b"], "gold": "b"}).gold == 1
    assert record_to_row({"context": "q", "choices": ["a", "b"], "gold": "1"}).gold == 1
    assert record_to_row({"context": "q", "choices": ["a"]}) == ChoiceRow("q", ("a",))


def test_compare_choices(llama_scorer, gpt2_scorer):
    rows = [("The capital of France is", [" Paris", " Rome"], 0),
            ("The quick brown", [" fox", " dog"], 0), ("2 + 2 =", [" 4", " 5"], 1)]
    out = compare_choices({"L": llama_scorer, "G": gpt2_scorer}, rows, num_bootstrap=500)
    acc_l = out["models"][0]["rules"]["sum"]["accuracy"]
    acc_g = out["models"][1]["rules"]["sum"]["accuracy"]
    d = out["pairs"][0]["rules"]["sum"]
    assert d["acc_diff"] == pytest.approx(acc_l - acc_g)
    assert d["ci_low"] <= d["acc_diff"] <= d["ci_high"]


@pytest.fixture(scope="module")
def mc_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mc") / "mc.jsonl"
    rows = [{"id": 1, "context": "The capital of France is", "choices": [" Paris", " Rome"],
             "gold": 0},
            {"id": 2, "context": "The quick brown", "choices": [" fox", " dog", " cat"],
             "gold": 0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_cli_choose(mc_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "rows.jsonl"
    assert main(["choose", mc_file, "--model", tiny_model_dir, "-o", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["num_rows"] == 2 and set(summary["rules"]) == {
        "sum", "per_token", "per_byte", "per_char", "mutual_info"}
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["id"] for x in lines] == [1, 2] and len(lines[1]["logprobs"]) == 3
    assert main(["choose", mc_file, "--model", tiny_model_dir]) == 0
    assert "per_byte" in capsys.readouterr().out


def test_cli_compare_choices(mc_file, tiny_model_dir, tiny_gpt2_dir, capsys):
    assert main(["compare", mc_file, "--choices", "--model", tiny_model_dir, "--model",
                 tiny_gpt2_dir, "--name", "L", "--name", "G", "--json",
                 "--num-bootstrap", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in out["models"]] == ["L", "G"]
    assert set(out["pairs"][0]["rules"]) >= {"sum", "per_byte"}


def test_cli_choose_bad_row(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"context": "q", "choices": ["a"]}\n{"context": "q"}\n')
    assert main(["choose", str(bad), "--model", tiny_model_dir]) == 2
    assert 'line 2: missing field "choices"' in capsys.readouterr().err
