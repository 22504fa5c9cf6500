"""Load on ``loglik serve``: N concurrent clients, R requests, vs offline ``score_many``.

    python bench/serve_load.py                       # the embedded model, 32 clients, 2,000
    python bench/serve_load.py --model PATH --requests 4000 --pairs-per-request 4

Runs offline ``Scorer.score_many`` on the pairs first, then starts ``loglik serve`` as a
subprocess on a free loopback port and has ``--clients`` threads POST ``/v1/score`` until
``--requests`` are answered. Checks: zero errors, every pair answered exactly once (ids), the
same numbers as offline (max |Δ|). Prints one JSON object: throughput of both, their ratio,
latency percentiles, the server's mean coalesced batch size, and CPU seconds of offline, the
clients and the server (its event loop and its other threads apart), which move much less
than wall-clock rates on a shared machine.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def make_pairs(n: int) -> list[dict]:
    from loglik.testing import CORPUS

    lines = [ln.strip() for ln in CORPUS.splitlines() if len(ln.split()) >= 3]
    pairs = []
    for i in range(n):
        words = lines[i % len(lines)].split()
        cut = 1 + (i // len(lines)) % (len(words) - 1)
        # A distinct prompt per pair: no prompt shared across pairs for offline to reuse.
        pairs.append({"id": i, "prompt": f"Record {i}: " + " ".join(words[:cut]),
                      "response": " " + " ".join(words[cut:])})
    return pairs


_local = threading.local()


def post(url: str, body: dict, timeout: float = 120.0) -> tuple[int, dict | list, float]:
    """POST JSON on this thread's keep-alive connection (as the openai SDK and lm-eval do)."""
    parts = urllib.parse.urlsplit(url)
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = http.client.HTTPConnection(parts.hostname, parts.port,
                                                        timeout=timeout)
    start = time.perf_counter()
    try:
        conn.request("POST", parts.path, json.dumps(body).encode(),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), time.perf_counter() - start
    except (OSError, http.client.HTTPException) as exc:
        _local.conn = None
        conn.close()
        return 0, {"error": repr(exc)}, time.perf_counter() - start


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) of process ``pid``: its main thread (the server's event
    loop), all its other threads together (tokenizer and model threads), and its child
    processes (the model worker, when there is one)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"event_loop": 0.0, "other_threads": 0.0, "worker": 0.0}
    for child in children(pid):
        for tid in os.listdir(f"/proc/{child}/task"):
            try:
                with open(f"/proc/{child}/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            out["worker"] += (int(fields[11]) + int(fields[12])) / tick
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:     # the thread ended
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = "event_loop" if int(tid) == pid else "other_threads"
        out[name] += (int(fields[11]) + int(fields[12])) / tick
    return out


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                out.append(int(name))
    return out


def drive(url: str, pairs: list[dict], clients: int, per_request: int) -> dict:
    """POST the pairs in groups from `clients` threads; check each comes back once."""
    groups = [pairs[i:i + per_request] for i in range(0, len(pairs), per_request)]
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda g: post(url + "/v1/score", {"pairs": g}), groups))
    wall = time.perf_counter() - start
    errors = [(code, body) for code, body, _ in answers if code != 200]
    got: dict[int, float] = {}
    duplicates = 0
    for code, body, _ in answers:
        if code == 200:
            for rec in body:
                duplicates += rec["id"] in got
                got[rec["id"]] = rec["logprob"]
    lat = sorted(t for _, _, t in answers)
    return {"wall_s": wall, "errors": len(errors), "first_error": errors[0] if errors else None,
            "answered": len(got), "lost": len(pairs) - len(got), "duplicated": duplicates,
            "logprobs": got, "latency_p50_s": lat[len(lat) // 2],
            "latency_p99_s": lat[min(len(lat) - 1, int(len(lat) * 0.99))]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the embedded model)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--pairs-per-request", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads, both sides")
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                    help="pass ARG to loglik serve (repeat), e.g. --serve-arg=--no-worker")
    args = ap.parse_args()

    from loglik import Scorer
    from loglik.serve import free_port

    pairs = make_pairs(args.requests * args.pairs_per_request)
    scorer = Scorer.from_pretrained(args.model, threads=args.threads)
    scorer.score_many(pairs[:64])                                   # warm up
    start = time.perf_counter()
    cpu = time.process_time()
    offline = {s.id: s.logprob for s in scorer.score_many(pairs)}
    offline_s = time.perf_counter() - start
    offline_cpu = time.process_time() - cpu

    port = free_port()
    cmd = [sys.executable, "-m", "loglik", "serve", "--port", str(port),
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue", "100000"]
    cmd += ["--model", args.model] if args.model else []
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += args.serve_arg
    server = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    print(server.stderr.read(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
        drive(url, pairs[:64], 4, 1)                                # warm up
        cpu_before, own_before = thread_cpu(server.pid), time.process_time()
        run = drive(url, pairs, args.clients, args.pairs_per_request)
        cpu_after, own_after = thread_cpu(server.pid), time.process_time()
        metrics = urllib.request.urlopen(url + "/metrics").read().decode()
    finally:
        server.terminate()
        server.wait(60)
    server_cpu = {name: round(cpu_after[name] - cpu_before[name], 2) for name in cpu_after}
    server_cpu["all"] = round(sum(server_cpu.values()), 2)
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines()
                  if line.startswith("loglik_batch_requests_"))
    batches = float(values["loglik_batch_requests_count"])
    got = run.pop("logprobs")
    diff = max((abs(got[i] - offline[i]) for i in got), default=0.0)
    out = {"model": args.model or "embedded", "pairs": len(pairs), "requests": args.requests,
           "clients": args.clients, "pairs_per_request": args.pairs_per_request,
           "offline_pairs_per_s": len(pairs) / offline_s,
           "served_pairs_per_s": len(pairs) / run["wall_s"],
           "ratio": offline_s / run["wall_s"], "max_abs_diff_vs_offline": diff,
           "offline_cpu_s": offline_cpu, "clients_cpu_s": own_after - own_before,
           "server_cpu_s": server_cpu,
           "mean_requests_per_batch": float(values["loglik_batch_requests_sum"]) / batches,
           **run}
    print(json.dumps(out, indent=1))
    return 0 if not run["errors"] and not run["lost"] and not run["duplicated"] else 1


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
