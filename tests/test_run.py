"""loglik.run.score_file, the file job: checks before the model, interruption, devices, the
terminal view of `loglik score`, and the command line's paper cuts."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from loglik.cli import build_parser, main
from loglik.errors import InputError
from loglik.run import count_records, score_file
from loglik.score_table import ScoreTable

from .test_cli_score import write_jsonl

PAIRS = [("The capital of France is ", "Paris."), ("Ans", "wer"), ("", "Hello world"),
         ("I love ", "🍕!"), ("Hello", ""), ("2 + 2 =", " 4")]


@pytest.fixture()
def pairs_file(tmp_path):
    rows = [{"id": f"r{i}", "prompt": p, "response": r} for i, (p, r) in enumerate(PAIRS)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _in_fresh_python(argv_list):
    """Run ``main(argv)`` for each argv in one fresh interpreter; report rc, stderr and
    whether torch or transformers were imported (they must not be, for these)."""
    script = (
        "import contextlib, io, json, sys\n"
        "from loglik.cli import main\n"
        "out = []\n"
        f"for argv in {argv_list!r}:\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        rc = main(argv)\n"
        "    out.append([rc, err.getvalue()])\n"
        "print(json.dumps({'runs': out, 'heavy': sorted(m for m in ('torch', 'transformers') "
        "if m in sys.modules)}))\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_bad_input_output_and_resume_fail_before_torch(tmp_path, pairs_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "response": "b"}\n'
                   '{"prompt": "a", "response": "b" "id": 3}\n')
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    done = write_jsonl(tmp_path / "done.jsonl", [{"id": "other", "logprob": -1.0}])
    model = str(tmp_path / "no-model-needed")       # never loaded: the checks come first
    cases = {
        "line 3: malformed JSON: Expecting ',' delimiter at column 33": [str(bad)],
        "no such file": [str(tmp_path / "missing.jsonl")],
        "does not exist; create it first": [pairs_file, "-o", str(tmp_path / "no/dir/o.jsonl")],
        "cannot write to folder /proc": [pairs_file, "-o", "/proc/out.jsonl"],
        "not a regular file": [pairs_file, "-o", "/dev/null", "--resume"],
        "has id 'other' but the input's has 'r0'": [pairs_file, "-o", done, "--resume"],
        "needs an output file": [pairs_file, "--resume"],
        "has no records; nothing to score": [str(empty), "-o", str(tmp_path / "e.jsonl")],
    }
    argvs = [["score", *args, "--model", model] for args in cases.values()]
    report = _in_fresh_python(argvs)
    assert report["heavy"] == []
    for (message, args), (rc, err) in zip(cases.items(), report["runs"]):
        assert len(err.strip().splitlines()) == 1, (args, err)
        assert message in err, (args, err)
        assert rc == (0 if "nothing to score" in message else 2), (args, err)
    assert (tmp_path / "e.jsonl").read_text() == ""
    assert json.loads(open(done).read())["id"] == "other"     # left as it was


def test_unreachable_hub_id_fails_fast_in_one_line(pairs_file, tmp_path):
    report = _in_fresh_python([["score", pairs_file, "--model", "loglik-test/not-cached",
                                "-o", str(tmp_path / "o.jsonl")],
                               ["choose", pairs_file, "--model", "loglik-test/not-cached"]])
    (rc, err), _ = report["runs"]
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "not a local folder" in err and "HF_HUB_OFFLINE" in err
    assert report["heavy"] == [] and not (tmp_path / "o.jsonl").exists()


def test_dev_null_takes_jsonl_a_pipe_is_no_parquet(pairs_file, tiny_model_dir, tmp_path,
                                                   capsys):
    assert main(["score", pairs_file, "--model", tiny_model_dir, "-o", "/dev/null"]) == 0
    assert capsys.readouterr().err == ""                   # was an os.fsync traceback
    pipe = tmp_path / "pipe.parquet"
    os.mkfifo(pipe)
    with pytest.raises(InputError, match="not a regular file .*Parquet needs a file"):
        score_file(pairs_file, str(pipe))


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_interrupt_says_what_the_output_holds(tmp_path, pairs_file, llama_scorer, suffix):
    out = str(tmp_path / f"o.{suffix}")
    seen = []

    def stop_after_three(score):
        seen.append(score.id)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        score_file(pairs_file, out, scorer=llama_scorer, on_score=stop_after_three)
    message = str(info.value)
    assert f"{out} holds the first 3 records" in message and "--resume" in message
    from loglik.data import iter_records

    assert [r["id"] for _, r in iter_records(out)] == ["r0", "r1", "r2"]
    run = score_file(pairs_file, out, scorer=llama_scorer, resume=True)
    assert (run.records_kept, run.records_written) == (3, 3)
    full = str(tmp_path / f"full.{suffix}")
    score_file(pairs_file, full, scorer=llama_scorer)
    assert [r for _, r in iter_records(out)] == [r for _, r in iter_records(full)]


def test_interrupt_before_any_record_and_the_cli_message(tmp_path, pairs_file, llama_scorer,
                                                        monkeypatch, capsys):
    out = str(tmp_path / "o.parquet")

    def stop(score):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt, match="holds the first 1 records"):
        score_file(pairs_file, out, scorer=llama_scorer, on_score=stop)
    import loglik.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt(f"interrupted before the first record was finished; {out} "
                                "holds no records")

    monkeypatch.setattr(loglik.run, "score_file", interrupted)
    assert main(["score", pairs_file, "-o", out]) == 130
    assert capsys.readouterr().err == (f"loglik: interrupted before the first record was "
                                       f"finished; {out} holds no records\n")


def test_progress_advances_per_batch_not_per_window(pairs_file, llama_scorer, monkeypatch):
    import loglik.progress

    advances = []

    class Recording(loglik.progress.Progress):
        def advance(self, n=1):
            advances.append(n)
            super().advance(n)

    monkeypatch.setattr(loglik.progress, "Progress", Recording)
    saved = llama_scorer.batch_tokens
    llama_scorer.batch_tokens = 16        # several batches in the one window of 6 records
    try:
        score_file(pairs_file, None, scorer=llama_scorer, progress=False)
    finally:
        llama_scorer.batch_tokens = saved
    assert advances[0] == 0                       # nothing kept from before
    assert sum(advances) == len(PAIRS) and len(advances) > 2 and max(advances) < len(PAIRS)


def test_count_records(tmp_path, pairs_file):
    assert count_records(pairs_file) == len(PAIRS)
    assert count_records(str(tmp_path / "*.jsonl")) == len(PAIRS)
    (tmp_path / "a.csv").write_text("prompt,response\na,b\n")
    assert count_records(str(tmp_path / "a.csv")) is None


# -- the terminal view -----------------------------------------------------------------------
def test_table_at_80_columns_never_cuts_numbers(llama_scorer):
    from rich.console import Console

    table = ScoreTable()
    scores = llama_scorer.score_many(
        [{"id": "an-identifier-far-too-long-for-a-narrow-terminal-column-" * 2,
          "prompt": p, "response": r} for p, r in PAIRS])
    for s in scores:
        table.add(s)
    console = Console(width=80, record=True, color_system=None)
    table.print(console)
    text = console.export_text()
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].split() == ["id", "log-prob", "tokens", "per", "token", "boundary"]
    for s, line in zip(scores, lines[1:]):
        assert f"{s.logprob:.2f}" in line and line.rstrip().endswith(s.boundary)
        assert "…" in line                                   # the id is cut, not a number
    total = sum(s.logprob for s in scores)
    tokens = sum(s.num_tokens for s in scores)
    import math

    assert lines[-1] == (f"{len(PAIRS)} records · total {total:.2f} nats · "
                         f"{total / tokens:.3f} nats/token · "
                         f"perplexity {math.exp(-total / tokens):.2f}")


def test_token_texts_in_every_record(pairs_file, llama_scorer, tmp_path):
    out = tmp_path / "o.jsonl"
    score_file(pairs_file, str(out), scorer=llama_scorer)
    for line, (prompt, response) in zip(out.read_text().splitlines(), PAIRS):
        rec = json.loads(line)
        assert len(rec["token_texts"]) == rec["num_tokens"]
        assert "".join(rec["token_texts"]) == (" " + response if prompt.endswith(" ")
                                               and response else response)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("script") is None, reason="needs script (util-linux)")
def test_a_real_terminal_gets_the_table(pairs_file, tiny_model_dir, tmp_path):
    """stdout on a pseudo-terminal (util-linux `script`): the table, not JSON lines."""
    command = (f"{sys.executable} -m loglik score {pairs_file} --model {tiny_model_dir} "
               "--no-progress")
    env = {**os.environ, "COLUMNS": "80", "TERM": "dumb"}
    proc = subprocess.run(["script", "-qec", command, "/dev/null"], capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    screen = proc.stdout
    assert "log-prob" in screen and "boundary" in screen and "perplexity" in screen
    assert '{"' not in screen and "r3" in screen
    piped = subprocess.run([sys.executable, "-m", "loglik", "score", pairs_file, "--model",
                            tiny_model_dir], capture_output=True, text=True, timeout=300)
    assert json.loads(piped.stdout.splitlines()[0])["id"] == "r0"     # JSONL when piped


# -- command line paper cuts -----------------------------------------------------------------
def test_every_option_has_help_and_shows_its_default():
    import argparse

    from loglik.cli import HelpFormatter

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, command in sub.choices.items():
        formatter = HelpFormatter(prog=name)
        for action in command._actions:
            where = f"loglik {name} {action.option_strings or action.metavar}"
            if action.dest == "help":
                continue
            assert action.help, where
            shown = formatter._get_help_string(action)
            if action.option_strings and action.default not in (None, False, "",
                                                                  argparse.SUPPRESS):
                assert "default" in shown, where
    train_help = " ".join(sub.choices["train"].format_help().split())
    for flag in ("--epochs EPOCHS passes over the training data (default: 1)",
                 "--seed SEED seed of", "--weight-decay WEIGHT_DECAY AdamW weight decay",
                 "-o OUT_DIR, --output-dir OUT_DIR where the final model"):
        assert flag in train_help, flag


def test_verbose_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["score", "x.jsonl", "-v"]).verbose is True
    assert parser.parse_args(["-v", "score", "x.jsonl"]).verbose is True
    assert parser.parse_args(["score", "x.jsonl"]).verbose is False


@pytest.mark.parametrize("window", [3, 1024])   # 3: the output ends on a window boundary
def test_resume_of_a_finished_output_changes_nothing(tmp_path, pairs_file, llama_scorer,
                                                     window):
    out = tmp_path / "o.jsonl"
    score_file(pairs_file, str(out), scorer=llama_scorer)
    before = out.read_bytes()
    saved, llama_scorer.window = llama_scorer.window, window
    try:
        run = score_file(pairs_file, str(out), scorer=llama_scorer, resume=True)
    finally:
        llama_scorer.window = saved
    assert (run.records_kept, run.records_written) == (len(PAIRS), 0)
    assert out.read_bytes() == before
