"""Ray Data: a local Ray started by the test, two scoring actors, the same results as the
single-process run for every record, shard-granular resume; and the message without ray."""

import json
import os
import sys

import pytest

from loglik.cli import main
from loglik.errors import InputError, MissingExtraError

WORDS = "the quick brown fox jumps over the lazy dog and the cat sat on a mat".split()


def write_shard(path, ids):
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": " ".join(WORDS[i % 7:i % 7 + 4])
                                        + " ", "response": " ".join(WORDS[(i * 3) % 9:
                                                                          (i * 3) % 9 + 1 + i % 5])})
                            + "\n" for i in ids))


def test_without_ray_says_what_to_install(monkeypatch, tmp_path, capsys):
    from loglik.distributed import score_on_ray

    monkeypatch.setitem(sys.modules, "ray", None)        # import ray -> ImportError
    write_shard(tmp_path / "a.jsonl", range(2))
    with pytest.raises(MissingExtraError, match=r"pip install 'loglik\[ray\]'"):
        score_on_ray(str(tmp_path / "a.jsonl"), str(tmp_path / "out"))
    assert main(["score", str(tmp_path / "a.jsonl"), "--ray", "-o", str(tmp_path / "o")]) != 0
    assert "pip install 'loglik[ray]'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'loglik[ray]'")
    pytest.importorskip("ray.data", reason="ray[data] is not installed")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                       "TRANSFORMERS_VERBOSITY": "error"}})
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.timeout(480)     # a deadlock (e.g. actors starving the read tasks) fails fast
def test_two_actors_match_the_single_process_run_and_resume_by_shard(local_ray, tmp_path,
                                                                      tiny_gpt2_dir,
                                                                      gpt2_scorer):
    import pyarrow.parquet as pq

    from loglik import read_examples
    from loglik.distributed import score_on_ray

    data = tmp_path / "shards"
    (data / "more").mkdir(parents=True)
    write_shard(data / "part-0.jsonl", range(0, 700))
    write_shard(data / "part-1.jsonl", [])                      # an empty shard
    write_shard(data / "more" / "part-2.jsonl", range(700, 1500))
    out = tmp_path / "scores"
    run = score_on_ray(str(data), str(out), scorer=tiny_gpt2_dir, num_actors=2,
                       batch_size=128, block_bytes=16 * 1024)   # ~100 rows a block
    names = ["more__part-2.parquet", "part-0.parquet", "part-1.parquet"]
    assert sorted(os.listdir(out)) == names
    assert run.records == 1500 and len(run.shards_scored) == 3
    assert len(run.actors_ready_s) == 2                        # both actors scored batches
    assert run.actor_cpus == 0.75 and run.actor_gpus == 0      # (2 - 0.5) / 2: fractional

    want = {s.id: s for s in gpt2_scorer.iter_scores(read_examples(str(data)))}
    got = {}
    for name in names:
        rows = pq.read_table(out / name).to_pylist()
        got.update((r["id"], r) for r in rows)
        ids = [r["id"] for r in rows]
        assert ids == sorted(ids, key=lambda i: int(i[1:]))     # input order within a shard
    assert pq.read_table(out / "part-1.parquet").num_rows == 0
    assert got.keys() == want.keys()
    for i, s in want.items():
        r = got[i]
        assert r["token_ids"] == s.token_ids and r["num_bytes"] == s.num_bytes
        assert r["boundary"] == s.boundary and r["tokens"] == s.tokens
        assert r["logprob"] == pytest.approx(s.logprob, abs=1e-4)
        assert r["token_logprobs"] == pytest.approx(s.token_logprobs, abs=1e-4)

    # shard-granular resume: a lost shard and a half-written leftover are redone, the rest kept
    before = (out / "part-0.parquet").read_bytes()
    kept_mtime = os.path.getmtime(out / "part-0.parquet")
    os.remove(out / "more__part-2.parquet")
    (out / "more__part-2.parquet.tmp").write_bytes(b"half")
    with pytest.raises(InputError, match="--resume"):
        score_on_ray(str(data), str(out), scorer=tiny_gpt2_dir)
    again = score_on_ray(str(data), str(out), scorer=tiny_gpt2_dir, num_actors=2,
                         resume=True)
    assert [os.path.basename(s) for s in again.shards_scored] == ["part-2.jsonl"]
    assert len(again.shards_skipped) == 2 and again.records == 800
    assert sorted(os.listdir(out)) == names
    assert os.path.getmtime(out / "part-0.parquet") == kept_mtime
    assert (out / "part-0.parquet").read_bytes() == before
    redone = pq.read_table(out / "more__part-2.parquet").to_pylist()
    assert [r["id"] for r in redone] == [f"r{i}" for i in range(700, 1500)]
    for r in redone:
        assert r["logprob"] == pytest.approx(want[r["id"]].logprob, abs=1e-4)
