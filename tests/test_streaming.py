"""Memory stays flat whatever the number of records: `loglik score` on 20k and on 200k short
pairs (tiny model, Parquet output) in subprocesses; the peak RSS must not grow with the count."""

import json
import os
import subprocess
import sys
import time

import pytest

WORDS = "the quick brown fox jumps over the lazy dog and the cat sat on a mat".split()


def write_pairs(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "prompt": " ".join(WORDS[i % 7:i % 7 + 3]) + " ",
                                "response": WORDS[(i * 3) % 9]}) + "\n")


def peak_rss_mb(cmd, timeout=600):
    """Run ``cmd``; return (its own peak RSS in MiB, seconds). os.wait4 gives the child's
    rusage alone (RUSAGE_CHILDREN would be the maximum over every child so far)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = start + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{cmd} ran past {timeout}s")
        time.sleep(0.2)
    err = proc.stderr.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, err
    return usage.ru_maxrss / 1024, time.monotonic() - start


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_peak_memory_does_not_grow_with_the_number_of_records(tmp_path, tiny_gpt2_dir):
    import pyarrow.parquet as pq

    peaks = {}
    for n in (20_000, 200_000):
        data, out = tmp_path / f"p{n}.jsonl", tmp_path / f"s{n}.parquet"
        write_pairs(data, n)
        peaks[n], seconds = peak_rss_mb([sys.executable, "-m", "loglik", "score", str(data),
                                         "--model", tiny_gpt2_dir, "-o", str(out)])
        assert pq.ParquetFile(out).metadata.num_rows == n
        print(f"{n} records: peak RSS {peaks[n]:.0f} MiB, {seconds:.0f} s")
    # Holding the records would cost >1 KiB each (hundreds of MiB for 180k more records);
    # streaming keeps the difference to allocator noise.
    assert peaks[200_000] - peaks[20_000] < 40, peaks
