"""A bounded load test of loglik serve: 32 concurrent clients, 2,000 requests (slow).

Zero errors, every request answered exactly once with its own numbers (= offline
``score_many`` within 1e-4 nats per pair). The throughput ratio to offline ``score_many`` is
printed, not asserted (bench/serve_load.py measures it in a separate process).
"""

from __future__ import annotations

import json
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

CLIENTS, REQUESTS = 32, 2000


@pytest.mark.slow
def test_32_clients_2000_requests(llama_scorer, capsys):
    from loglik.serve import BackgroundServer, ServeConfig, create_app
    from loglik.testing import CORPUS

    lines = [ln.split() for ln in CORPUS.splitlines() if len(ln.split()) >= 3]
    pairs = [{"id": i, "prompt": " ".join(w[:1 + i % (len(w) - 1)]),
              "response": " " + " ".join(w[1 + i % (len(w) - 1):])}
             for i, w in ((i, lines[i % len(lines)]) for i in range(REQUESTS))]
    start = time.perf_counter()
    offline = {s.id: s.logprob for s in llama_scorer.score_many(pairs)}
    offline_s = time.perf_counter() - start

    def ask(url: str, pair: dict) -> tuple[int, list]:
        req = urllib.request.Request(url + "/v1/score", json.dumps({"pairs": [pair]}).encode(),
                                     {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, [json.loads(e.read())]

    app = create_app(llama_scorer, ServeConfig(max_queue=4 * CLIENTS), model_name="tiny")
    with BackgroundServer(app) as srv:
        start = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(lambda p: ask(srv.url, p), pairs))
        served_s = time.perf_counter() - start
        metrics = urllib.request.urlopen(srv.url + "/metrics").read().decode()
    errors = [a for a in answers if a[0] != 200]
    assert not errors, errors[:3]
    ids = [rec["id"] for _, body in answers for rec in body]
    assert sorted(ids) == list(range(REQUESTS))              # none lost, none duplicated
    for pair, (_, body) in zip(pairs, answers):              # each got its own answer
        assert body[0]["id"] == pair["id"]
        assert abs(body[0]["logprob"] - offline[pair["id"]]) < 1e-4
    assert f'loglik_requests_total{{endpoint="score",status="200"}} {REQUESTS}' in metrics
    with capsys.disabled():
        print(f"\nserve load: {REQUESTS} requests from {CLIENTS} clients in {served_s:.1f} s "
              f"({REQUESTS / served_s:.0f}/s); offline score_many {offline_s:.1f} s; "
              f"ratio {offline_s / served_s:.2f}")
