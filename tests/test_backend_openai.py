"""The openai backend against real servers on loopback: loglik serve and a wrong engine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

PAIRS = [("The capital of France is", " Paris."), ("The capital of France is", " Rome."),
         ("", "The dog sleeps."), ("Question: what is the answer?\nAnswer:", " forty-two"),
         ("東京是", "日本的首都。"), ("Pizza", " 🍕 and coffee ☕ are great.")]


@pytest.fixture(scope="module")
def served(llama_scorer):
    from loglik.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(llama_scorer, model_name="tiny")) as srv:
        yield srv


def _max_diff(a, b):
    return max((abs(x - y) for s, t in zip(a, b)
                for x, y in zip(s.token_logprobs, t.token_logprobs)), default=0.0)


def test_token_ids_through_loglik_serve_equal_local(served, llama_scorer, sp_tokenizer):
    from loglik import Scorer

    remote = Scorer.from_server(served.url + "/v1", tokenizer=sp_tokenizer, mode="ids",
                                concurrency=3)
    assert remote.backend.model == "tiny" and remote.backend.max_length == 256
    got = remote.score_many(PAIRS, top_k=3)
    want = llama_scorer.score_many(PAIRS, top_k=3)
    assert _max_diff(got, want) < 1e-5
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids and g.token_greedy == w.token_greedy
        assert [[t for t, _ in alts] for alts in g.token_top] == \
            [[t for t, _ in alts] for alts in w.token_top]
        assert abs(g.logprob - w.logprob) < 1e-4


def test_text_mode_aligns_by_offsets(served, llama_scorer, sp_tokenizer):
    from loglik import Scorer

    joint = [p for p in PAIRS if llama_scorer.encode(*p).boundary == "joint"]
    remote = Scorer.from_server(served.url + "/v1", tokenizer=sp_tokenizer, mode="text")
    ok = [p for p in joint if "東" not in p[0] and "🍕" not in p[1]]
    assert _max_diff(remote.score_many(ok), llama_scorer.score_many(ok)) < 1e-5


def test_refuses_an_echo_that_does_not_match(tiny_llama, sp_tokenizer):
    from .wrong_engine import wrong_app

    from loglik import BackendError, Scorer
    from loglik.serve import BackgroundServer

    with BackgroundServer(wrong_app(tiny_llama, "drop_first")) as srv:
        remote = Scorer.from_server(srv.url + "/v1", tokenizer=sp_tokenizer, mode="ids")
        with pytest.raises(BackendError, match="echoed .* tokens for .* sent"):
            remote.score_many(PAIRS[:2])


def test_unreachable_server_is_a_clear_error():
    from loglik.backends.openai import Client, ServerError
    from loglik.serve import free_port

    client = Client(f"http://127.0.0.1:{free_port()}/v1", retries=2, backoff=0.01, timeout=2)
    with pytest.raises(ServerError, match="no answer after 3 tries"):
        client.request("GET", "models")


@pytest.mark.slow
def test_cli_score_through_server_equals_local(tiny_model_dir, tmp_path):
    from loglik import Scorer
    from loglik.serve import BackgroundServer, create_app

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": p, "response": r}) + "\n"
                            for i, (p, r) in enumerate(PAIRS)))
    scorer = Scorer.from_pretrained(tiny_model_dir)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with BackgroundServer(create_app(scorer, model_name="tiny")) as srv:
        remote = subprocess.run(
            [sys.executable, "-m", "loglik", "score", str(data), "--model",
             srv.url + "/v1", "--tokenizer", tiny_model_dir, "--served-model", "tiny"],
            capture_output=True, text=True, timeout=300, env=env)
    assert remote.returncode == 0, remote.stderr
    got = [json.loads(line) for line in remote.stdout.splitlines()]
    want = [s.to_record() for s in scorer.score_many(
        [{"id": i, "prompt": p, "response": r} for i, (p, r) in enumerate(PAIRS)])]
    assert [g["id"] for g in got] == list(range(len(PAIRS)))
    for g, w in zip(got, want):
        assert g["token_ids"] == w["token_ids"] and g["boundary"] == w["boundary"]
        assert abs(g["logprob"] - w["logprob"]) < 1e-4


@pytest.mark.slow
def test_loglik_serve_process_openai_client_and_graceful_shutdown(tiny_model_dir):
    """The real command: start, answer the openai client, finish a request in flight on
    SIGTERM, then exit."""
    openai = pytest.importorskip("openai")
    from loglik.serve import free_port

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SERVE_KEY": "k3y"}
    proc = subprocess.Popen([sys.executable, "-m", "loglik", "serve", "--model",
                             tiny_model_dir, "--port", str(port), "--api-key-env", "SERVE_KEY",
                             "--served-model-name", "tiny"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "loglik serve did not start"
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y",
                               max_retries=0)
        out = client.completions.create(model="tiny", prompt="The dog sleeps.", echo=True,
                                        max_tokens=0, logprobs=1)
        assert out.choices[0].logprobs.token_logprobs[0] is None
        assert all(v < 0 for v in out.choices[0].logprobs.token_logprobs[1:])
        result = {}

        def long_request():
            result["out"] = client.completions.create(model="tiny", prompt="The",
                                                      max_tokens=200, temperature=0)

        t = threading.Thread(target=long_request)
        t.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        t.join(120)
        assert result["out"].usage.completion_tokens > 0
        # uvicorn re-raises the signal once it has shut down (the Unix convention).
        assert proc.wait(60) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_text_offsets_with_the_dummy_prefix_space(sp_tokenizer):
    """llama-cpp-python counts offsets in " " + text (its first token is " The"): matched
    after a shift of one; offsets that fit neither are refused."""
    from loglik import BackendError
    from loglik.backends.openai import ServerError, align_by_offsets, refuses_ids
    from loglik.tokenize import as_text_tokenizer

    tok = as_text_tokenizer(sp_tokenizer)
    sent = [1] + sp_tokenizer("The dog sleeps.", add_special_tokens=False)["input_ids"]
    pieces = [" The", " dog", " sle", "eps", "."]          # as llama-cpp-python echoes them
    assert len(sent) == len(pieces) + 1
    offsets = [0, 4, 8, 12, 15, 16]                        # + the generated token
    choice = {"logprobs": {"tokens": pieces + ["x"], "text_offset": offsets,
                           "token_logprobs": [None, -1.0, -2.0, -3.0, -4.0, -5.0]}}
    assert align_by_offsets(tok, choice, sent, 3, 1) == [2, 3, 4]     # " sle", "eps", "."
    choice["logprobs"]["tokens"][0] = "The"                # no leading space: no shift
    with pytest.raises(BackendError, match="tokenized the text differently"):
        align_by_offsets(tok, choice, sent, 3, 1)
    assert refuses_ids(ServerError("HTTP 500: Input should be a valid string", 500))
    assert refuses_ids(ServerError("bad", 422)) and not refuses_ids(ServerError("oops", 500))
