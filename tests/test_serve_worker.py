"""loglik serve with the model in a worker process (loglik.serve.worker): the wire format, the
same numbers as in process, a dead worker as a clear 503, graceful shutdown of both processes.

The worker is a real spawned process loading a saved tiny model; the server a real uvicorn on
loopback (or the real ``loglik serve`` command for the shutdown test).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from loglik.serve.wire import pack_requests, pack_results, unpack_requests, unpack_results
from loglik.types import Detail, Request, TokenResult

from .test_serve import post

PAIRS = [{"id": "a", "prompt": "The capital of France is", "response": " Paris."},
         {"id": 2, "prompt": "Question: what is the answer?\nAnswer:", "response": " forty-two"},
         {"id": None, "prompt": "", "response": "The dog sleeps."},
         {"id": "d", "prompt": "The capital of France is", "response": " Rome."}]


def test_wire_round_trip_is_the_objects_themselves():
    requests = [Request((1, 2, 3), (4, 5)), Request((7,), ()), Request((), (9,)),
                Request((1, 2, 3), (6,))]
    assert unpack_requests(pack_requests(requests)) == requests
    plain = [TokenResult([-0.7, -0.4], [True, False]), TokenResult([], []),
             TokenResult([-math.inf], [False]), TokenResult([-1e-300], [True])]
    full = [TokenResult([-0.7, -0.4], [True, False], [1, 3], [0.5, 1.25],
                        [[(4, -0.7), (8, -1.5)], [(3, -0.1), (5, -0.4)]]),
            TokenResult.empty(Detail(rank=True, entropy=True, top_k=2)),
            TokenResult([-2.0], [False], [7], [3.0], [[(1, -0.5), (2, -0.6)]]),
            TokenResult([-0.1], [True], [1], [0.0], [[(6, -0.1)]])]   # fewer alternatives
    for results in (plain, full):
        back = unpack_results(pack_results(results), [len(r.logprobs) for r in results])
        assert back == results   # float64 both ways: exact, not close
    with pytest.raises(ValueError, match="3 token log-probs for requests with 2"):
        unpack_results(pack_results(plain[:1] + plain[2:3]), [1, 1])


def test_cli_default_runs_hf_models_in_a_worker_but_not_gguf_or_urls():
    import argparse

    from loglik.cli.serve import _use_worker
    from loglik.errors import ConfigError

    def use(model, worker=None):
        return _use_worker(argparse.Namespace(model=model, worker=worker))

    assert use(None) and use("path/to/model") and use("x.gguf", worker=True)
    assert not use("x.GGUF") and not use("http://host:8000/v1") and not use("m", worker=False)
    with pytest.raises(ConfigError, match="server URL"):
        use("http://host:8000/v1", worker=True)


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    pytest.importorskip("uvicorn")
    from loglik.serve import start_worker

    scorer = start_worker(tiny_model_dir, threads=1)
    yield scorer
    scorer.backend.close()


def test_worker_gives_the_in_process_numbers(worker, llama_scorer, tiny_llama):
    from .test_serve import reference

    got = worker.score_many(PAIRS, rank=True, entropy=True, top_k=3)
    want = llama_scorer.score_many(PAIRS, rank=True, entropy=True, top_k=3)
    for g, w in zip(got, want):
        assert g.id == w.id and g.token_ids == w.token_ids and g.tokens == w.tokens
        assert g.boundary == w.boundary and g.token_ranks == w.token_ranks
        assert max(abs(a - b) for a, b in zip(g.token_logprobs, w.token_logprobs)) < 1e-5
        assert [t for t, _ in g.token_top[0]] == [t for t, _ in w.token_top[0]]
    enc = worker.encode(PAIRS[0]["prompt"], PAIRS[0]["response"])
    ids = list(enc.context_ids + enc.response_ids)
    ref = reference(tiny_llama, ids)[len(enc.context_ids) - 1:]   # plain float64 forward
    assert abs(got[0].logprob - math.fsum(ref)) < 1e-4
    assert worker.backend.alive and worker.backend.pid != os.getpid()


def test_calls_from_several_threads_each_get_their_own_answer(worker, llama_scorer):
    """The batcher keeps two batches in flight: concurrent calls are answered in the order
    they were sent, each to its caller (different pairs per thread, so a crossed answer
    cannot pass)."""
    from concurrent.futures import ThreadPoolExecutor

    from loglik.types import Request

    encoded = [llama_scorer.encode(p["prompt"], p["response"]) for p in PAIRS]
    jobs = [[Request(e.context_ids, e.response_ids) for e in encoded[i:] + encoded[:i]]
            for i in range(len(encoded))] * 4
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(worker.backend.run_requests, jobs))
    for reqs, results in zip(jobs, got):
        want = llama_scorer.run_requests(reqs)
        assert len(results) == len(reqs)
        for g, w in zip(results, want):
            assert max(abs(a - b) for a, b in zip(g.logprobs, w.logprobs)) < 1e-5
    assert worker.backend.alive


def test_server_over_a_worker_scores_completes_and_generates(worker, llama_scorer):
    from loglik.serve import BackgroundServer, ServeConfig, create_app

    bodies = [("/v1/score", {"pairs": PAIRS, "options": {"top_k": 2}}),
              ("/v1/completions", {"prompt": ["The dog sleeps.", [1, 40, 50, 60]], "echo": True,
                                   "max_tokens": 0, "logprobs": 3, "prompt_logprobs": 2}),
              ("/v1/completions", {"prompt": "The capital of", "max_tokens": 5,
                                   "temperature": 0, "logprobs": 1}),
              ("/tokenize", {"prompt": "The dog sleeps."})]
    answers = {}
    for name, scorer in (("worker", worker), ("inline", llama_scorer)):
        with BackgroundServer(create_app(scorer, ServeConfig(), model_name="tiny")) as srv:
            answers[name] = [post(srv.url + path, body)[:2] for path, body in bodies]
            health = json.loads(urllib.request.urlopen(srv.url + "/health").read())
            metrics = urllib.request.urlopen(srv.url + "/metrics").read().decode()
        assert ("worker_pid" in health) == (name == "worker")
        assert 'loglik_requests_total{endpoint="score",status="200"} 1' in metrics
    for (code, got), (code_in, want) in zip(answers["worker"], answers["inline"]):
        assert code == code_in == 200
        got, want = _no_ids(got), _no_ids(want)
        assert _close(got, want), (got, want)
    generated = answers["worker"][2][1]["choices"][0]
    assert generated["text"] and len(generated["logprobs"]["tokens"]) >= 1


@pytest.mark.slow
def test_a_dead_worker_is_a_503_naming_it_and_never_a_hang(tiny_model_dir, caplog):
    """Requests in flight and queued when the worker dies, and every one after, get a 503."""
    pytest.importorskip("uvicorn")
    from loglik.serve import BackgroundServer, ServeConfig, create_app, start_worker

    scorer = start_worker(tiny_model_dir, threads=1)
    with BackgroundServer(create_app(scorer, ServeConfig(), model_name="tiny")) as srv:
        assert post(srv.url + "/v1/score", {"pairs": PAIRS[:1]})[0] == 200
        os.kill(scorer.backend.pid, signal.SIGSTOP)   # frozen: the next batch stays in flight
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            post(srv.url + "/v1/score", {"pairs": PAIRS}))) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        assert results == []   # sent to the worker (or queued behind it), not answered
        os.kill(scorer.backend.pid, signal.SIGKILL)   # dies with a batch in flight
        for t in threads:
            t.join(60)
        assert len(results) == 4
        for code, body, _ in results:
            assert code == 503 and body["error"]["type"] == "worker_died"
            assert f"(pid {scorer.backend.pid}) died (killed by signal 9)" in \
                body["error"]["message"]
        code, body, _ = post(srv.url + "/v1/completions",
                             {"prompt": "The dog", "max_tokens": 2})   # generation too
        assert code == 503 and "restarted" in body["error"]["message"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "/health")
        assert err.value.code == 503
    died = [r for r in caplog.records if "model worker process" in r.getMessage()]
    assert len(died) == 1 and died[0].levelname == "ERROR"   # one log line, not one per call
    scorer.backend.close()


@pytest.mark.slow
def test_ctrl_c_finishes_requests_in_flight_then_stops_the_worker(tiny_model_dir):
    """SIGINT to the whole process group (a terminal's Ctrl-C reaches the worker too)."""
    from loglik.serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "loglik", "serve", "--model", tiny_model_dir,
                             "--port", str(port), "--threads", "1", "--worker",
                             "--batch-wait-ms", "50"],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = json.loads(urllib.request.urlopen(url + "/health", timeout=2).read())
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        pid = health["worker_pid"]
        results = []
        many = [dict(p, id=i) for i in range(40) for p in PAIRS[:1]]
        threads = [threading.Thread(target=lambda: results.append(
            post(url + "/v1/score", {"pairs": many}))) for _ in range(6)]
        for t in threads:
            t.start()
        time.sleep(0.3)   # the requests are in flight (the batch wait is 50 ms)
        os.killpg(proc.pid, signal.SIGINT)
        for t in threads:
            t.join(120)
        # uvicorn re-raises the signal once it has shut down; the CLI may turn it into 130
        assert proc.wait(120) in (0, 130, -signal.SIGINT), proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert [code for code, _, _ in results] == [200] * 6
    assert all(len(body) == 40 for _, body, _ in results)
    assert not os.path.exists(f"/proc/{pid}"), "the worker outlived the server"


@pytest.mark.slow
def test_a_seq2seq_model_serves_through_a_worker(tmp_path, torch_threads):
    pytest.importorskip("uvicorn")
    from loglik import Scorer
    from loglik.serve import BackgroundServer, ServeConfig, create_app, start_worker
    from loglik.testing import tiny_seq2seq

    from .test_seq2seq import TOKENIZER

    tok = TOKENIZER["bart"]()
    tiny_seq2seq("bart", tok, scale=4.0, seed=2).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    want = [s.to_record() for s in Scorer.from_pretrained(str(tmp_path)).score_many(PAIRS)]
    scorer = start_worker(str(tmp_path), threads=1)
    try:
        with BackgroundServer(create_app(scorer, ServeConfig(), model_name="bart")) as srv:
            code, body, _ = post(srv.url + "/v1/score", {"pairs": PAIRS})
            code_c, err, _ = post(srv.url + "/v1/completions", {"prompt": "x", "echo": True})
    finally:
        scorer.backend.close()
    assert code == 200 and [r["boundary"] for r in body] == ["seq2seq"] * len(PAIRS)
    assert _close(_no_ids(body), _no_ids(want))
    assert code_c == 422 and "encoder-decoder" in err["error"]["message"]


def _no_ids(body):
    """An answer without the fields that differ per call (a completion's id and time)."""
    if isinstance(body, dict) and body.get("object") == "text_completion":
        return {k: v for k, v in body.items() if k not in ("id", "created")}
    return body


def _close(a, b, tol=1e-5) -> bool:
    """Equal structure and values, floats within ``tol`` (packed neighbours round in fp32)."""
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k], tol)
                                                                   for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_close, a, b))
    return a == b


@pytest.mark.slow
@pytest.mark.llamacpp
def test_gguf_serves_in_process_and_a_worker_for_it_says_why_not(tmp_path, tiny_llama,
                                                                   sp_tokenizer):
    """A .gguf model's tokenizer is llama.cpp's vocabulary inside the loaded model: it serves
    in one process (the CLI's default for .gguf); asking for a worker is a clear error."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    pytest.importorskip("uvicorn")
    from loglik import Scorer
    from loglik.errors import ConfigError
    from loglik.serve import BackgroundServer, ServeConfig, create_app, start_worker
    from loglik.testing_gguf import write_gguf

    path = str(write_gguf(tiny_llama, sp_tokenizer, tmp_path / "tiny.gguf", dtype="f32"))
    scorer = Scorer.from_pretrained(path, threads=1)
    want = [s.to_record() for s in scorer.score_many(PAIRS)]
    with BackgroundServer(create_app(scorer, ServeConfig(), model_name="gguf")) as srv:
        code, body, _ = post(srv.url + "/v1/score", {"pairs": PAIRS})
    assert code == 200 and [r["token_ids"] for r in body] == [w["token_ids"] for w in want]
    assert max(abs(r["logprob"] - w["logprob"]) for r, w in zip(body, want)) < 1e-5
    with pytest.raises(ConfigError, match="--no-worker"):
        start_worker(path, threads=1)
