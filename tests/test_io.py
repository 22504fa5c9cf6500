"""Crash-safe Parquet output and sharded input: atomic parts, resume, kill -9 mid-run, folders
and globs of JSONL / Parquet shards."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglik.cli import main
from loglik.data import expand_inputs, read_examples
from loglik.errors import ConfigError, InputError
from loglik.io import ParquetWriter, open_output

WORDS = "the quick brown fox jumps over the lazy dog and the cat sat on a mat".split()


def record(i, **extra):
    return {"id": i, "logprob": -0.5 * i, "token_ids": [i, i + 1], "tokens": ["a", "b"],
            "token_logprobs": [-0.25 * i, -0.25 * i], **extra}


def pairs(n, start=0):
    return [{"id": i, "prompt": " ".join(WORDS[i % 7: i % 7 + 4]) + " ",
             "response": " ".join(WORDS[(i * 3) % 9:(i * 3) % 9 + 1 + i % 5])}
            for i in range(start, start + n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_parts_are_atomic_and_merged_in_order(tmp_path):
    out = str(tmp_path / "s.parquet")
    w = ParquetWriter(out, part_rows=3)
    for i in range(7):
        w.write(record(i))
    # two complete parts so far, nothing merged yet, the 7th record still buffered
    parts = sorted(os.listdir(out + ".parts"))
    assert parts == ["part-000000000000.parquet", "part-000000000003.parquet"]
    assert not os.path.exists(out)
    w.close()
    assert not os.path.exists(out + ".parts")
    rows = pq.read_table(out).to_pylist()
    assert [r["id"] for r in rows] == list(range(7))
    assert rows[2] == {**record(2), "truncated_tokens": 0}
    assert pq.ParquetFile(out).metadata.num_row_groups == 3          # one per part


def test_resume_ignores_a_half_written_part_and_gives_the_same_bytes(tmp_path):
    full = str(tmp_path / "full.parquet")
    with ParquetWriter(full, part_rows=4) as w:
        for i in range(10):
            w.write(record(i))
    # simulate a kill -9: two parts done, a third half-written under its temporary name
    out = str(tmp_path / "out.parquet")
    w = ParquetWriter(out, part_rows=4)
    for i in range(8):
        w.write(record(i))
    with open(os.path.join(out + ".parts", "part-000000000008.parquet.tmp"), "wb") as f:
        f.write(b"PAR1 garbage")
    del w                                     # no close: the process died
    w = open_output(out, resume=True, part_rows=4)
    assert (w.done, w.last_id) == (8, 7)
    for i in range(8, 10):
        w.write(record(i))
    w.close()
    with open(out, "rb") as a, open(full, "rb") as b:
        assert a.read() == b.read()
    # resuming a finished file keeps it as it is
    w = open_output(out, resume=True)
    assert w.done == 10
    w.close()
    with open(out, "rb") as a, open(full, "rb") as b:
        assert a.read() == b.read()


def test_types_nulls_and_nested_columns(tmp_path):
    out = str(tmp_path / "t.parquet")
    with ParquetWriter(out, part_rows=2) as w:
        w.write({"logprob": -1.0, "token_top": [[["a", -0.1], ["b", -2.0]]]})   # no id
        w.write({"logprob": -math.inf, "token_top": [[["c", -0.3]]]})
        w.write({"id": "x", "logprob": -2.0, "token_top": [], "truncated_tokens": 3})
    table = pq.read_table(out)
    assert table.schema.field("id").type == pa.string()      # null part unified with strings
    assert table.schema.field("token_top").type == pa.list_(pa.list_(
        pa.struct([("token", pa.string()), ("logprob", pa.float64())])))
    rows = table.to_pylist()
    assert [r["id"] for r in rows] == [None, None, "x"]
    assert rows[1]["logprob"] == -math.inf
    assert rows[0]["token_top"] == [[{"token": "a", "logprob": -0.1},
                                     {"token": "b", "logprob": -2.0}]]
    assert [r["truncated_tokens"] for r in rows] == [0, 0, 3]


def test_mixed_id_types_say_how_to_fix(tmp_path):
    w = ParquetWriter(str(tmp_path / "m.parquet"), part_rows=10)
    w.write(record(1))
    w.write({**record(2), "id": "two"})
    with pytest.raises(ConfigError, match="ids of mixed types"):
        w.flush()


def test_parts_folder_changed_by_hand_is_refused(tmp_path):
    out = str(tmp_path / "h.parquet")
    w = ParquetWriter(out, part_rows=2)
    for i in range(6):
        w.write(record(i))
    os.remove(os.path.join(out + ".parts", "part-000000000002.parquet"))
    with pytest.raises(InputError, match="starts at record 4, expected 2"):
        ParquetWriter(out, resume=True)


def test_folder_and_glob_of_mixed_shards(tmp_path):
    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    rows = pairs(9)
    write_jsonl(shards / "a-0.jsonl", rows[:3])
    pq.write_table(pa.Table.from_pylist(rows[3:6]), shards / "a-1.parquet")
    write_jsonl(shards / "b" / "c.jsonl", rows[6:])
    (shards / "_SUCCESS").write_text("")
    (shards / ".hidden.jsonl").write_text("not json\n")
    assert [os.path.basename(p) for p in expand_inputs(str(shards))] == [
        "a-0.jsonl", "a-1.parquet", "c.jsonl"]
    assert [e.id for e in read_examples(str(shards))] == list(range(9))
    assert [e.id for e in read_examples(str(shards / "a-*"))] == list(range(6))
    assert [e.id for e in read_examples(str(shards / "**" / "*.jsonl"))] == [0, 1, 2, 6, 7, 8]
    bad = read_examples(str(shards / "b" / "c.jsonl"))
    assert next(bad).source.endswith("c.jsonl")              # errors name the shard
    with pytest.raises(InputError, match="no file matches"):
        list(read_examples(str(tmp_path / "nothing-*.jsonl")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no data files"):
        list(read_examples(str(tmp_path / "empty")))


def test_cli_parquet_output_equals_jsonl_output(tmp_path, tiny_model_dir, capsys):
    shards = tmp_path / "in"
    shards.mkdir()
    rows = pairs(12)
    write_jsonl(shards / "p0.jsonl", rows[:5])
    write_jsonl(shards / "p1.jsonl", rows[5:])
    jl, pqt = tmp_path / "o.jsonl", tmp_path / "o.parquet"
    assert main(["score", str(shards), "--model", tiny_model_dir, "-o", str(jl), "--top-k",
                 "2"]) == 0
    assert main(["score", str(shards), "--model", tiny_model_dir, "-o", str(pqt), "--top-k",
                 "2", "--part-rows", "5"]) == 0
    want = [json.loads(line) for line in jl.read_text().splitlines()]
    got = pq.read_table(pqt).to_pylist()
    assert len(got) == len(want) == 12
    for w, g in zip(want, got):
        g["token_top"] = [[[a["token"], a["logprob"]] for a in alts] for alts in g["token_top"]]
        g = {k: v for k, v in g.items() if not (k == "truncated_tokens" and v == 0)}
        assert g == w


def run_until_killed(cmd, is_mid_run, timeout=180):
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not is_mid_run():
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_parquet_kill_minus_9_then_resume_gives_the_uninterrupted_file(tmp_path,
                                                                        tiny_model_dir):
    data = write_jsonl(tmp_path / "many.jsonl", pairs(2000))
    cmd = [sys.executable, "-m", "loglik", "score", data, "--model", tiny_model_dir,
           "--batch-tokens", "256", "--part-rows", "200"]
    full = tmp_path / "full.parquet"
    subprocess.run(cmd + ["-o", str(full)], check=True, timeout=300)
    out = tmp_path / "out.parquet"
    parts = tmp_path / "out.parquet.parts"

    def complete_parts():
        try:
            return [n for n in os.listdir(parts) if n.endswith(".parquet")]
        except FileNotFoundError:
            return []

    run_until_killed(cmd + ["-o", str(out)], lambda: len(complete_parts()) >= 2)
    n_parts = len(complete_parts())
    assert not out.exists() and 2 <= n_parts < 10, "the kill should land mid-run"
    # every part left behind is a complete, readable file
    for name in complete_parts():
        assert pq.ParquetFile(parts / name).metadata.num_rows == 200
    subprocess.run(cmd + ["-o", str(out), "--resume"], check=True, timeout=300)
    assert pq.read_table(out).to_pylist() == pq.read_table(full).to_pylist()   # values
    assert out.read_bytes() == full.read_bytes()                                # and bytes
    assert not parts.exists()
