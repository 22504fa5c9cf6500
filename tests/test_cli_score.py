"""`loglik score` end to end: output contract, errors and exit codes, --resume after kill -9."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from loglik import Scorer
from loglik.cli import main

PAIRS = [("The capital of France is ", "Paris."), ("Ans", "wer"), ("", "Hello world"),
         ("I love ", "🍕!"), ("Hello", "")]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


@pytest.fixture()
def pairs_file(tmp_path):
    rows = [{"id": f"r{i}", "prompt": p, "response": r} for i, (p, r) in enumerate(PAIRS)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def test_score_writes_one_record_per_input_line(tmp_path, pairs_file, tiny_model_dir, capsys):
    out = tmp_path / "scores.jsonl"
    assert main(["score", pairs_file, "--model", tiny_model_dir, "-o", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in records] == [f"r{i}" for i in range(len(PAIRS))]
    expected = Scorer.from_pretrained(tiny_model_dir).score_many(PAIRS)
    for rec, s in zip(records, expected):
        assert set(rec) >= {"id", "logprob", "num_tokens", "num_bytes", "num_chars", "token_ids",
                            "tokens", "token_logprobs", "greedy", "boundary"}
        assert rec["logprob"] == pytest.approx(s.logprob, abs=1e-6)
        assert rec["logprob"] == pytest.approx(sum(rec["token_logprobs"]), abs=1e-9)
        assert rec["num_tokens"] == len(rec["token_ids"]) == len(rec["tokens"])
        assert rec["boundary"] in ("joint", "split")
    assert records[1]["boundary"] == "split"          # "Ans" + "wer" merges
    assert records[4]["logprob"] == 0.0 and records[4]["num_tokens"] == 0
    assert records[3]["num_bytes"] == len(" 🍕!".encode()) and records[3]["num_chars"] == 3


@pytest.mark.slow
def test_stdout_and_stdin(tmp_path, pairs_file, tiny_model_dir):
    data = open(pairs_file, "rb").read()
    proc = subprocess.run([sys.executable, "-m", "loglik", "score", "-", "--model",
                           tiny_model_dir], input=data, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == len(PAIRS) and json.loads(lines[0])["id"] == "r0"


def test_csv_input_and_detail_flags(tmp_path, tiny_model_dir, capsys):
    path = tmp_path / "p.csv"
    path.write_text('question,answer\n"The capital of France is","Paris"\n', encoding="utf-8")
    code = main(["score", str(path), "--model", tiny_model_dir, "--prompt-field", "question",
                 "--response-field", "answer", "--rank", "--entropy", "--top-k", "3"])
    assert code == 0
    rec = json.loads(capsys.readouterr().out)
    assert len(rec["token_ranks"]) == len(rec["token_entropies"]) == rec["num_tokens"]
    assert all(len(alts) == 3 for alts in rec["token_top"])


@pytest.mark.parametrize("content,message", [
    (b'{"prompt": "a", "response": "b"}\n{oops}\n', "line 2: malformed JSON"),
    (b'{"prompt": "a", "answer": "b"}\n',
     'line 1: missing field "response" (fields present: prompt, answer)'),
    (b'{"prompt": "a", "response": 3}\n', 'field "response" must be a string'),
    (b'{"prompt": "\xc3\x28", "response": "b"}\n', "line 1: not valid UTF-8"),
])
def test_bad_input_one_line_error_and_nonzero_exit(tmp_path, tiny_model_dir, content, message,
                                                   capsys):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    out = tmp_path / "o.jsonl"
    assert main(["score", str(path), "--model", tiny_model_dir, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and str(path) in err
    assert not out.exists()      # the first records are checked before the model loads


def test_bad_record_after_the_first_records_keeps_the_good_ones(tmp_path, tiny_model_dir,
                                                                  capsys):
    from loglik.run import PEEK_RECORDS

    good = [{"prompt": "a", "response": f"b{i}"} for i in range(PEEK_RECORDS + 5)]
    path = tmp_path / "late.jsonl"
    path.write_bytes(write_jsonl(path, good) and path.read_bytes() + b"{oops}\n")
    out = tmp_path / "o.jsonl"
    assert main(["score", str(path), "--model", tiny_model_dir, "-o", str(out)]) == 2
    assert f"line {len(good) + 1}: malformed JSON" in capsys.readouterr().err
    assert len(out.read_text().splitlines()) == len(good)    # scored before the error


def test_unknown_model_path(pairs_file, tmp_path, capsys):
    assert main(["score", pairs_file, "--model", str(tmp_path / "no-such-model")]) == 2
    assert "not found" in capsys.readouterr().err


def test_context_overflow_and_left_truncation(tmp_path, tiny_model_dir, capsys):
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60   # > 256 positions
    path = write_jsonl(tmp_path / "long.jsonl", [{"prompt": long_prompt, "response": " Paris"}])
    assert main(["score", path, "--model", tiny_model_dir]) == 2
    assert "--truncate left" in capsys.readouterr().err
    assert main(["score", path, "--model", tiny_model_dir, "--truncate", "left"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["truncated_tokens"] > 0


@pytest.mark.slow
def test_resume_after_kill_minus_9_gives_the_uninterrupted_file(tmp_path, tiny_model_dir):
    words = "the quick brown fox jumps over the lazy dog and the cat sat on a mat".split()
    rows = [{"id": i, "prompt": " ".join(words[i % 7: i % 7 + 5]) + " ",
             "response": " ".join(words[(i * 3) % 9:(i * 3) % 9 + 1 + i % 6])}
            for i in range(1500)]
    data = write_jsonl(tmp_path / "many.jsonl", rows)
    cmd = [sys.executable, "-m", "loglik", "score", data, "--model", tiny_model_dir,
           "--batch-tokens", "256"]
    full = tmp_path / "full.jsonl"
    subprocess.run(cmd + ["-o", str(full)], check=True, timeout=300)
    part = tmp_path / "part.jsonl"
    proc = subprocess.Popen(cmd + ["-o", str(part)])
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or part.stat().st_size < 50_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(part.read_bytes().split(b"\n")) - 1
    assert 0 < n_before < len(rows), "the kill should land mid-run"
    subprocess.run(cmd + ["-o", str(part), "--resume"], check=True, timeout=300)
    assert part.read_bytes() == full.read_bytes()
    # resuming a finished file changes nothing
    subprocess.run(cmd + ["-o", str(part), "--resume"], check=True, timeout=300)
    assert part.read_bytes() == full.read_bytes()


def test_resume_refuses_a_different_input(tmp_path, tiny_model_dir, capsys):
    a = write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "prompt": "a", "response": " b"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"id": "y", "prompt": "a", "response": " b"}])
    out = str(tmp_path / "o.jsonl")
    assert main(["score", a, "--model", tiny_model_dir, "-o", out]) == 0
    assert main(["score", b, "--model", tiny_model_dir, "-o", out, "--resume"]) == 2
    assert "same input" in capsys.readouterr().err


@pytest.mark.slow
def test_progress_bar_on_a_terminal(tmp_path, pairs_file, tiny_model_dir):
    """stderr on a pseudo-terminal gets a rich progress bar; stdout still has only records."""
    import pty

    master, slave = pty.openpty()
    out = tmp_path / "o.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "loglik", "score", pairs_file, "--model",
                             tiny_model_dir, "-o", str(out)], stderr=slave,
                            env={**os.environ, "COLUMNS": "100", "TERM": "xterm"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=120) == 0
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "scoring" in screen and f"{len(PAIRS)}/{len(PAIRS)}" in screen
    assert len(out.read_text().splitlines()) == len(PAIRS)
