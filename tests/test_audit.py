"""audit: a correct model passes; each deliberately broken model or flawed calculation is
caught by the check meant for it, and named."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch

from loglik import Scorer
from loglik.audit import DIAGNOSES, audit
from loglik.audit.diagnose import dumps_record
from loglik.tokenize import HFTokenizer
from loglik.types import TokenResult

# Few, short examples keep the checks fast; two share a prompt (shared-context path).
EXAMPLES = [
    ("The capital of France is", " Paris."),
    ("The capital of France is", " Rome, not Paris."),
    ("Question: what is the answer?\nAnswer:", " the answer is forty-two."),
    ("", "The quick brown fox"),
]


# -- deliberately broken models --------------------------------------------------------------
class Wrapped(torch.nn.Module):
    """A causal LM behind a wrapper; the scorer sees only ``forward`` (no fast head path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    @property
    def base_model(self):
        return self

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                use_cache=None, **kw):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, cache=cache, use_cache=use_cache, **kw)


class DropsCachedPosition(Wrapped):
    """Its KV cache loses the most recent position before every incremental step."""

    def forward(self, input_ids=None, cache=None, **kw):
        if cache is not None and cache.get_seq_length() > 1:
            cache.crop(-1)      # transformers 5: a negative count removes the last tokens
        return super().forward(input_ids=input_ids, cache=cache, **kw)


class IgnoresPositionIds(Wrapped):
    """Drops the position ids it is given (wrong positions under left padding or packing)."""

    def forward(self, input_ids=None, position_ids=None, **kw):
        return super().forward(input_ids=input_ids, **kw)


class UnnormalisedBackend:
    """Returns log-probs at temperature 2 applied after normalising: rows no longer sum to 1."""

    def __init__(self, inner):
        self.inner, self.max_length, self.vocab_size = inner, inner.max_length, inner.vocab_size

    def score(self, requests, detail=None):
        out = self.inner.score(requests, detail) if detail else self.inner.score(requests)
        return [TokenResult([v / 2 for v in r.logprobs], r.greedy, r.ranks, r.entropies,
                            [[(t, v / 2) for t, v in alts] for alts in r.top]
                            if r.top is not None else None) for r in out]


class TemplateTokenizer(HFTokenizer):
    """Encodes with the tokenizer's special tokens on, as a chat-template pipeline might."""

    def encode_batch(self, texts):
        return self.hf(list(texts), add_special_tokens=True)["input_ids"] if texts else []


def _names(report, status):
    return sorted(c.name for c in report.checks if c.status == status)


# -- correct models pass ---------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_correct_model_passes_every_check(which, request):
    scorer = request.getfixturevalue(f"{which}_scorer")
    report = audit(scorer, EXAMPLES)
    assert report.passed, report.to_dict()
    assert _names(report, "pass") == ["invariance", "kv_cache", "normalisation", "tokenizer"]
    inv = report.check("invariance").details
    ways = {"scorer_alone", "scorer_batched", "scorer_batched_reversed", "right_padded",
            "left_padded", "packed", "shared_context"}
    if getattr(scorer.backend, "packing", False):
        ways |= {"scorer_packed", "scorer_shared_context", "scorer_packed_shared"}
    assert set(inv["max_abs_diff"]) == ways
    assert max(inv["max_abs_diff"].values()) < 1e-4
    assert report.check("kv_cache").details["max_abs_diff_token"] < 1e-4
    assert report.check("normalisation").details["max_abs_logsumexp"] < 1e-5


# -- each broken model trips its check -------------------------------------------------------
@pytest.mark.slow
def test_cache_that_drops_a_position_fails_kv_cache(tiny_llama, sp_tokenizer):
    scorer = Scorer.from_hf(DropsCachedPosition(tiny_llama), sp_tokenizer)
    report = audit(scorer, EXAMPLES, checks=("kv_cache", "invariance"))
    kv = report.check("kv_cache")
    assert kv.status == "fail" and kv.details["max_abs_diff_token"] > 0.1
    assert "KV-cache" in kv.summary
    inv = report.check("invariance")    # the full-forward paths are untouched
    assert inv.details["max_abs_diff"]["left_padded"] < 1e-4
    assert inv.details["failed"] == ["shared_context"]   # it reuses the (broken) cache
    assert not report.passed


@pytest.mark.slow
def test_ignored_position_ids_fail_invariance(tiny_gpt2, bpe_tokenizer):
    # GPT-2 has absolute positions: left padding without position ids shifts every token
    scorer = Scorer.from_hf(IgnoresPositionIds(tiny_gpt2), bpe_tokenizer)
    report = audit(scorer, EXAMPLES, checks=("kv_cache", "invariance"))
    inv = report.check("invariance")
    assert inv.status == "fail"
    assert inv.details["failed"] == ["left_padded", "packed"]
    assert inv.details["max_abs_diff"]["right_padded"] < 1e-4
    assert "left_padded" in inv.summary
    assert report.check("kv_cache").status == "pass"


def test_unnormalised_backend_fails_normalisation(llama_scorer, sp_tokenizer):
    scorer = Scorer(UnnormalisedBackend(llama_scorer.backend), sp_tokenizer)
    report = audit(scorer, EXAMPLES, checks=("normalisation", "invariance", "kv_cache"))
    norm = report.check("normalisation")
    assert norm.status == "fail" and norm.details["max_abs_logsumexp"] > 0.5
    assert report.check("kv_cache").status == "skip"      # no model behind this backend
    assert report.check("invariance").status == "pass"


def test_tokenizer_with_an_extra_token_fails(tiny_llama, sp_tokenizer):
    import copy

    tok = copy.deepcopy(sp_tokenizer)
    tok.add_tokens(["<extra>"])
    assert len(tok) == len(sp_tokenizer) + 1
    scorer = Scorer.from_hf(tiny_llama, tok)
    report = audit(scorer, [("The answer is", " <extra>")], checks=("tokenizer",))
    t = report.check("tokenizer")
    assert t.status == "fail"
    assert t.details["tokenizer_size"] == t.details["embedding_rows"] + 1
    assert t.details["out_of_range"] == [{"example": 0, "ids": [len(sp_tokenizer)]}]
    assert "cannot be embedded" in t.summary


def test_doubled_bos_fails(tiny_llama, sp_tokenizer):
    # a chat template already wrote "<s>", and the tokenizer adds one more
    scorer = Scorer.from_hf(tiny_llama, TemplateTokenizer(sp_tokenizer))
    report = audit(scorer, [("<s>[INST] hi [/INST]", " Paris.")], checks=("tokenizer",))
    t = report.check("tokenizer")
    assert t.status == "fail" and t.details["doubled_bos"] == 1
    assert "doubled BOS" in t.summary


def test_boundary_report_counts_split(llama_scorer):
    report = audit(llama_scorer, [("def add(a, b):\n", "    return a + b\n"),
                                  ("The dog", " sleeps.")], checks=("tokenizer",))
    t = report.check("tokenizer")
    assert t.status == "pass" and t.details["boundary_split"] == 1
    assert t.details["split_examples"] == ["'def add(a, b):\\n' + '    return a + b\\n'"]
    assert t.details["contexts_starting_with_bos"] == 2 and t.details["doubled_bos"] == 0


# -- flawed calculations by another tool -----------------------------------------------------
def hand_loop(model, tok, prompt, response, flaw=None):
    """An independent per-token log-prob loop over the HF model, with one deliberate flaw."""
    p_ids = tok(prompt)["input_ids"]
    j_ids = tok(prompt + response)["input_ids"]
    assert j_ids[:len(p_ids)] == p_ids, "pick examples whose boundary is joint"
    ctx, resp = p_ids, j_ids[len(p_ids):]
    if flaw == "bos_missing":
        ctx = ctx[1:]
    if flaw == "bos_scored":
        resp = [tok.bos_token_id] + resp
    seq = ctx + resp
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].double(), -1)  # (T, V)
    after = [float(logp[t, seq[t + 1]]) for t in range(len(seq) - 1)]   # predicts t+1
    start = len(ctx) - 1
    values = after[start:start + len(resp)]
    if flaw == "shifted":
        values = after[start - 1:start - 1 + len(resp)]
    elif flaw == "unshifted":
        values = [float(logp[len(ctx) + i, t]) for i, t in enumerate(resp)]
    elif flaw == "prompt_included":
        values = after
    elif flaw == "log_base_2":
        values = [v / math.log(2) for v in values]
    elif flaw == "log_base_10":
        values = [v / math.log(10) for v in values]
    total = math.fsum(values)
    if flaw == "mean_not_sum":
        total /= len(values)
    if flaw == "probabilities_added":
        return None, math.fsum(math.exp(v) for v in values)
    return values, total


FLAWS = [None, "shifted", "unshifted", "prompt_included", "bos_scored", "bos_missing",
         "mean_not_sum", "log_base_2", "log_base_10", "probabilities_added"]
PAIRS = [("The capital of France is", " Paris. The capital of Italy is Rome."),
         ("Question: what is the answer?\nAnswer:", " the answer is forty-two.")]


@pytest.fixture(scope="module")
def flawed_file(tmp_path_factory, tiny_llama, sp_tokenizer):
    """One record per (flaw, pair, form): token lists, sums only, or both."""
    lines, expected = [], []
    for flaw in FLAWS:
        for prompt, response in PAIRS:
            values, total = hand_loop(tiny_llama, sp_tokenizer, prompt, response, flaw)
            forms = ["both"] if flaw == "mean_not_sum" else ["tokens", "sum"]
            if values is None:
                forms = ["sum"]
            for form in forms:
                lines.append(dumps_record(prompt, response,
                                          values if form in ("tokens", "both") else None,
                                          total if form in ("sum", "both") else None))
                expected.append(("ok" if flaw is None else
                                 "shifted" if flaw == "unshifted" else flaw, form))
    path = tmp_path_factory.mktemp("check") / "other_tool.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path), expected


def test_each_flaw_is_caught_and_named(llama_scorer, flawed_file):
    path, expected = flawed_file
    report = audit(llama_scorer, EXAMPLES[:1], check_file=path, checks=())
    got = [(r.diagnosis, form) for r, (_, form) in zip(report.records, expected)]
    assert got == expected
    assert [r.index for r in report.records] == list(range(len(expected)))
    assert all(r.ok == (d == "ok") for r, (d, _) in zip(report.records, expected))
    check = report.check("check_file")
    assert check.status == "fail"
    assert check.details["diagnoses"]["ok"] == 4
    assert set(check.details["diagnoses"]) <= set(DIAGNOSES)


def test_flaws_without_bos(gpt2_scorer, tiny_gpt2, bpe_tokenizer, tmp_path):
    """GPT-2 style (no BOS added): the same flaws, named the same way."""
    flaws = [None, "shifted", "unshifted", "prompt_included", "log_base_10", "mean_not_sum",
             "probabilities_added"]
    lines = []
    for flaw in flaws:
        values, total = hand_loop(tiny_gpt2, bpe_tokenizer, *PAIRS[0], flaw)
        lines.append(dumps_record(*PAIRS[0], values, total))
    path = tmp_path / "gpt2_tool.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = audit(gpt2_scorer, [], check_file=str(path), checks=())
    assert [r.diagnosis for r in report.records] == [
        "ok", "shifted", "shifted", "prompt_included", "log_base_10", "mean_not_sum",
        "probabilities_added"]


def test_unknown_flaw(llama_scorer, tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text(dumps_record("The dog", " sleeps.", logprob=-0.123) + "\n")
    rec = audit(llama_scorer, [], check_file=str(path), checks=()).records[0]
    assert (rec.index, rec.ok, rec.diagnosis) == (0, False, "unknown")
    assert "expected" in rec.reason


def test_check_file_errors_name_the_line(llama_scorer, tmp_path):
    from loglik.errors import InputError

    path = tmp_path / "bad.jsonl"
    path.write_text(dumps_record("a", " b", logprob=-1.0) + "\n"
                    + json.dumps({"prompt": "a", "response": " b"}) + "\n")
    with pytest.raises(InputError, match=r"bad.jsonl line 2: .*token_logprobs"):
        audit(llama_scorer, [], check_file=str(path), checks=())


# -- the command line contract -----------------------------------------------------------------
def _cli(argv):
    from loglik.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(argv)
    return rc, buf.getvalue()


def test_cli_json_contract(tiny_model_dir, tmp_path, tiny_llama, sp_tokenizer):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                            for p, r in EXAMPLES[:2]))
    check = tmp_path / "other.jsonl"
    good = hand_loop(tiny_llama, sp_tokenizer, *PAIRS[0])
    bad = hand_loop(tiny_llama, sp_tokenizer, *PAIRS[0], flaw="log_base_2")
    check.write_text(dumps_record(*PAIRS[0], *good) + "\n\n" + dumps_record(*PAIRS[0], *bad)
                     + "\n")
    rc, out = _cli(["audit", str(data), "--model", tiny_model_dir, "--json",
                    "--check", str(check)])
    d = json.loads(out)
    assert rc == 1 and d["passed"] is False
    assert [c["name"] for c in d["checks"]] == ["kv_cache", "invariance", "normalisation",
                                                "tokenizer", "check_file"]
    assert [c["passed"] for c in d["checks"]] == [True, True, True, True, False]
    assert [(r["index"], r["ok"], r["diagnosis"]) for r in d["records"]] == [
        (0, True, "ok"), (2, False, "log_base_2")]    # index: 0-based line of the file
    assert [r["line"] for r in d["records"]] == [1, 3]    # line: 1-based, as in every message


    rc, out = _cli(["audit", str(data), "--model", tiny_model_dir, "--checks",
                    "tokenizer,normalisation"])
    assert rc == 0 and "PASS  tokenizer" in out and "PASS  normalisation" in out
    assert "all checks passed" in out


def test_check_table_shows_1_based_lines():
    from rich.console import Console

    from loglik.audit.result import AuditReport, CheckResult, RecordResult

    report = AuditReport([CheckResult("check_file", "fail", "1 of 2 records agree")],
                         [RecordResult(0, True, "ok", ""),
                          RecordResult(2, False, "log_base_2", "off by ln 2", -1.0, -1.44)])
    console = Console(width=80, record=True)
    report.print(console)
    row = next(r for r in console.export_text().splitlines() if "log_base_2" in r)
    assert row.split()[1] == "3", row
