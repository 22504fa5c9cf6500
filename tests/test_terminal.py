"""Terminal views (render/terminal.py) through rich consoles of fixed width: numbers are never
cut, narrow consoles drop columns (and say which), text is cut instead; the CLI's --wide and
progress flags."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from rich.cells import cell_len
from rich.console import Console

from loglik import Scorer
from loglik.backends.fake import FakeBackend, WordTokenizer
from loglik.cli import main
from loglik.comparison import compare
from loglik.explain import explain
from loglik.render.terminal import (Col, choice_tables, fit_table, print_comparison,
                                    print_explanation, print_fitted)

LONG_A, LONG_B = "checkpoint-step-000200-final", "checkpoint-step-000060-warmup"


def _console(width):
    buf = io.StringIO()
    return Console(file=buf, width=width, force_terminal=True, color_system=None), buf


def _lines(buf):
    return buf.getvalue().splitlines()


def test_fit_table_drops_columns_not_digits():
    cols = [Col("model", "text", 8), Col("Σ logprob"), Col("mean/example"), Col("tokens"),
            Col("perplexity"), Col("bits/byte"), Col("CI")]
    rows = [["default_model_with_a_long_name", "-2159.1234", "-359.8542", "1234567", "23.14",
             "1.4245", "[-1453.1234, -1200.0000]"]]
    fitted = fit_table(cols, rows, width=80, drop=("mean/example", "tokens", "perplexity"))
    console, buf = _console(80)
    print_fitted(console, fitted)
    out = buf.getvalue()
    assert fitted.left_out == ["mean/example", "tokens"]
    assert "left out at this width: mean/example, tokens (--wide shows them" in out
    for number in ("-2159.1234", "23.14", "1.4245", "[-1453.1234, -1200.0000]"):
        assert number in out
    assert "-359.8542" not in out and "1234567" not in out
    assert "default_mo…" in out.replace("\n", "")            # text is cut, with an ellipsis
    assert max(cell_len(line) for line in _lines(buf)) <= 80

    wide = fit_table(cols, rows, width=80, wide=True, drop=("mean/example", "tokens"))
    console, buf = _console(80)
    print_fitted(console, wide)
    out = buf.getvalue()
    assert wide.left_out == [] and wide.width > 80 and "left out" not in out
    for cell in rows[0]:
        assert cell in out


def test_fit_table_packs_whole_list_items():
    cols = [Col("pos"), Col("alternatives", "list", 12)]
    rows = [["0", ["␣Paris 0.99", "␣Rome 0.01", "␣forty-two 0.00"]]]
    console, buf = _console(34)                              # 24 cells for the list
    print_fitted(console, fit_table(cols, rows, width=34))
    body = [line for line in _lines(buf) if line.startswith("│")]
    assert len(body) == 1                                    # one line per row, never wrapped
    assert "␣Paris 0.99  ␣Rome 0.01" in body[0] and "forty" not in body[0]


def _fake_models():
    tok = WordTokenizer(["the", "cat", "sat", "dog"])
    a = FakeBackend(len(tok), {(0, 2): {5: 0.5, 9: 0.25}, (0, 2, 5): {7: 0.5}})
    b = FakeBackend(len(tok), {(0, 2): {5: 0.25, 9: 0.5}, (0, 2, 5): {7: 0.5}})
    return Scorer(a, tok), Scorer(b, tok)


EXAMPLES = [("the", " cat"), ("the", " dog"), ("the", " cat sat"), ("the", " sat")]


@pytest.fixture(scope="module")
def comparison():
    a, b = _fake_models()
    return compare({LONG_A: a, LONG_B: b}, EXAMPLES, num_bootstrap=500, detail=True)


def _numbers(c):
    """Every number the tables print, as printed."""
    p = c.pairs[0]
    out = [f"{p.diff_total:+.2f}", f"[{p.ci_low:+.2f}, {p.ci_high:+.2f}]"]
    for m in c.models:
        out += [f"{m.stats.total_logprob:.2f}", f"{m.stats.logprob_per_token:.3f}"]
    out += [f"{e['diff']:+.2f}" for e in p.largest]
    out += [f"{e['logprob_a']:.2f}" for e in p.largest]
    return out


def test_comparison_at_80_columns(comparison):
    console, buf = _console(80)
    print_comparison(comparison, console)
    out = buf.getvalue()
    assert max(cell_len(line) for line in _lines(buf)) <= 80
    for number in _numbers(comparison):
        assert number in out, number
    assert not re.search(r"│ *[-+\d.,\[\] %/]+…", out)       # no number cut with an ellipsis
    assert "left out at this width" in out and "--wide" in out
    # one definition of the difference, labelled: a − b in the titles and the header
    assert "paired differences Δ = a − b" in out
    assert f"a = {LONG_A}, b = {LONG_B}" in " ".join(out.split())
    assert f"{comparison.pairs[0].diff_total:+.2f}" == "+0.69"   # ln 2, a better


def test_comparison_wide_has_every_column(comparison):
    console, buf = _console(250)
    print_comparison(comparison, console)
    out = buf.getvalue()
    assert "left out" not in out
    for header in ("mean/example", "tokens", "/byte", "top-1", "entropy", "median rank",
                   "compared on", "Δ mean", "Δ /byte", "KL p50", "Δp rms", "id"):
        assert header in out, header
    assert f"{LONG_A} − {LONG_B}" in out

    narrow, buf80 = _console(80)                              # --wide on a narrow terminal
    print_comparison(comparison, narrow, wide=True)
    assert "median rank" in buf80.getvalue() and "left out" not in buf80.getvalue()


def test_explain_at_80_columns_one_line_per_token():
    tok = WordTokenizer(["the", "cat", "sat", "catastrophically", "saturated", "dogmatic"])
    lm = FakeBackend(len(tok), {})                            # uniform: every alternative ties
    e = explain(Scorer(lm, tok), "the", " cat sat", top_k=8)
    console, buf = _console(80)
    print_explanation(e, console)
    lines = _lines(buf)
    body = [line for line in lines if line.startswith("│")]
    assert len(body) == len(e.rows) == 2                      # alternatives never wrap
    assert max(cell_len(line) for line in lines) <= 80
    p = f"{1 / len(tok):.2f}"
    for line in body:
        alts = line.split("│")[-2].split()
        assert alts and alts[1::2] == [p] * (len(alts) // 2)  # whole "token p" pairs only
    assert f"{e.logprob:.4f}" in buf.getvalue()
    assert f"{e.rows[0].logprob:.4f}" in body[0]

    wide, buf = _console(200)
    print_explanation(e, wide)
    body = [line for line in _lines(buf) if line.startswith("│")]
    assert len(body) == 2
    assert all(len(re.findall(rf" {re.escape(p)}(?= )", line)) == 8 for line in body)
    assert "left out" not in buf.getvalue() and " p " in _lines(buf)[2]


def test_choice_tables_label_the_difference():
    models = [{"name": n, "num_rows": 10, "num_gold": 10,
               "rules": {"sum": {"accuracy": acc, "stderr": 0.1}}}
              for n, acc in ((LONG_A, 0.7), (LONG_B, 0.5))]
    pairs = [{"a": LONG_A, "b": LONG_B,
              "rules": {"sum": {"acc_diff": 0.2, "ci_low": -0.1, "ci_high": 0.5}}}]
    console, buf = _console(80)
    for fitted in choice_tables(models, pairs, width=80):
        print_fitted(console, fitted)
    out = buf.getvalue()
    assert "0.700 ± 0.100" in out and "0.500 ± 0.100" in out
    assert "+0.200" in out and "[-0.100, +0.500]" in out
    assert f"a = {LONG_A}, b = {LONG_B}" in " ".join(out.split())
    assert max(cell_len(line) for line in _lines(buf)) <= 80


# -- the command line: --wide, progress ------------------------------------------------------
@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("views") / "pairs.jsonl"
    path.write_text("".join(json.dumps({"id": i, "prompt": p, "response": r}) + "\n"
                            for i, (p, r) in enumerate([("The dog", " sleeps."),
                                                        ("The capital of France is", " Paris."),
                                                        ("def f(x):\n", "    return x\n")])))
    return str(path)


def test_cli_compare_progress_only_when_asked(pairs_file, tiny_model_dir, capsys):
    argv = ["compare", pairs_file, "--model", tiny_model_dir, "--model", tiny_model_dir,
            "--name", "a", "--name", "b", "--num-bootstrap", "50", "--no-token-stats"]
    assert main(argv) == 0
    quiet = capsys.readouterr()
    assert quiet.err == ""                                    # not a terminal: no progress
    assert "largest differences (nats), a = a, b = b" in quiet.out
    assert "left out" not in quiet.out                        # a pipe gets every column
    assert main([*argv, "--progress", "--json"]) == 0
    loud = capsys.readouterr()
    assert re.search(r"comparing: 6/6 in \d+\.\d s", loud.err)   # 3 examples x 2 models
    assert json.loads(loud.out)["pairs"][0]["diff_total"] == 0.0


def test_cli_choose_and_audit_progress(tmp_path, tiny_model_dir, capsys):
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "The capital of France is",
                              "choices": [" Paris", " Rome"], "gold": 0}) + "\n")
    assert main(["choose", str(mc), "--model", tiny_model_dir, "--json", "--progress"]) == 0
    assert re.search(r"choosing: 1/1 in \d+\.\d s", capsys.readouterr().err)
    assert main(["choose", str(mc), "--model", tiny_model_dir, "--json"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["audit", "--model", tiny_model_dir, "--checks", "tokenizer,normalisation",
                 "--json", "--progress"]) == 0
    assert re.search(r"auditing: 2/2 in \d+\.\d s", capsys.readouterr().err)


def test_progress_counts_every_example_once():
    a, b = _fake_models()
    seen = []
    c = compare([a, b], EXAMPLES * 100, num_bootstrap=10, token_stats=False,
                progress=seen.append)
    assert sum(seen) == 2 * 400 and max(seen) <= 256 and len(seen) == 4   # 256 + 144 each
    assert c.models[0].stats.num_examples == 400
    assert c.pairs[0].diff_total == pytest.approx(100 * math.log(2))


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("script"), reason="needs util-linux 'script' for a pty")
def test_real_80_column_terminal(pairs_file, tiny_model_dir):
    """A real terminal (a pty from `script`, 80 columns): tables fit, the bar shows."""
    def run_in_pty(*argv):
        cmd = "stty cols 80 rows 50; " + " ".join(shlex.quote(a) for a in
                                                   [sys.executable, "-m", "loglik", *argv])
        done = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True,
                              text=True, timeout=600, env={**os.environ, "TERM": "xterm"})
        assert done.returncode == 0, done.stdout[-2000:]
        text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", done.stdout)
        return [line for line in text.replace("\r\n", "\n").split("\n")]

    lines = run_in_pty("explain", "The capital of France is", " Paris. The capital of Italy",
                       "--model", tiny_model_dir, "--top-k", "5")
    table = [line for line in lines if line.startswith("│")]
    assert table and max(cell_len(line) for line in lines) <= 80
    assert len(table) == len([line for line in table if re.match(r"│ +\d+ │", line)])

    lines = run_in_pty("compare", pairs_file, "--model", tiny_model_dir, "--model",
                       tiny_model_dir, "--name", "first-checkpoint", "--name",
                       "second-checkpoint", "--num-bootstrap", "50", "--no-token-stats")
    text = "\n".join(lines)
    assert "comparing" in text and "6/6" in text               # the progress bar, on a tty
    assert "left out at this width" in text
    assert max(cell_len(line.split("\r")[-1]) for line in lines) <= 80
