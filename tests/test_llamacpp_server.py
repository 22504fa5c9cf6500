"""The openai backend and ``loglik audit --engine`` against llama-cpp-python's own server.

``python -m llama_cpp.server`` serves a GGUF written from the suite's tiny Llama
(:func:`loglik.testing_gguf.write_gguf`); the reference is the same weights through
transformers. What llama-cpp-python 0.3 does, and what these tests pin down:

* token-id prompts are refused (HTTP 500, "Input should be a valid string") and so are lists
  of prompts: loglik sends text, one prompt per request, and matches tokens by text_offset,
  whose offsets count the SentencePiece dummy-prefix space;
* BOS is not echoed and the first token's log-prob is null although BOS precedes it
  (``first_token_unscored``);
* top_logprobs are keyed by text: byte-fallback tokens (all "") overwrite each other
  (``top_k_keys_collide``);
* the values are exact with an f32 KV cache (``--type_k 0 --type_v 0``), and off by a few
  1e-4 nats with the default f16 cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: "
                    "pip install 'loglik[llamacpp]'")
pytest.importorskip("gguf", reason="pip install 'loglik[llamacpp]'")
for _name in ("sse_starlette", "starlette_context", "pydantic_settings", "fastapi"):
    pytest.importorskip(_name, reason="llama-cpp-python's server needs its [server] extra: "
                        "pip install 'loglik[llamacpp-server]'")

pytestmark = [pytest.mark.llamacpp, pytest.mark.slow]

PAIRS = [("The capital of France is", " Paris."), ("The dog", " sleeps on the mat."),
         ("Question: what is the answer?\nAnswer:", " forty-two"),
         ("Pizza", " 🍕 and coffee ☕ are great.")]


def start(gguf: str, *extra: str):
    from loglik.serve import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf,
                             "--host", "127.0.0.1", "--port", str(port), "--n_threads", "1",
                             "--verbose", "False", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=2).close()
            return proc, url + "/v1"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read()[-2000:]}")
            time.sleep(0.3)


def stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def gguf(tmp_path_factory, tiny_llama, sp_tokenizer):
    from loglik.testing_gguf import write_gguf

    return str(write_gguf(tiny_llama, sp_tokenizer,
                          tmp_path_factory.mktemp("llsrv") / "tiny.gguf", dtype="f32"))


@pytest.fixture(scope="module")
def f32_server(gguf):
    proc, url = start(gguf, "--type_k", "0", "--type_v", "0")   # f32 KV cache
    yield url
    stop(proc)


def test_openai_backend_through_llama_cpp_server(f32_server, llama_scorer, sp_tokenizer):
    from loglik import BackendError, Scorer

    remote = Scorer.from_server(f32_server, tokenizer=sp_tokenizer)   # mode "auto"
    got = remote.score_many(PAIRS)
    assert remote.backend.mode == "text" and remote.backend.prompts_per_call == 1
    want = llama_scorer.score_many(PAIRS)
    for g, w in zip(got, want):
        assert g.token_ids == w.token_ids
        assert max(abs(a - b) for a, b in zip(g.token_logprobs, w.token_logprobs)) < 1e-5
    with pytest.raises(BackendError, match="null for the first token"):
        remote.score("", "The dog sleeps.")     # the server hides the first log-prob


def test_audit_engine_on_llama_cpp_server(f32_server, llama_scorer):
    from loglik.audit.engine import audit_engine

    report = audit_engine(f32_server, llama_scorer)
    status = {c.name: c.status for c in report.checks}
    assert status == {"alignment": "fail", "agreement": "pass", "normalisation": "fail",
                      "sampling": "pass", "batch_invariance": "pass", "determinism": "pass"}
    alignment = report.check("alignment").details
    assert alignment["sent_as"] == "text" and alignment["prompts_per_request"] == 1
    assert alignment["diagnoses"] == {"first_token_unscored": 7}
    assert alignment["not_checked_split_boundary"] == 2        # 东京是|日本… and one more
    assert report.check("agreement").details["max_abs_diff"] < 1e-5
    assert report.check("normalisation").details["diagnosis"] == "top_k_keys_collide"
    assert abs(report.check("sampling").details["implied_temperature"] - 1) < 1e-3


def test_default_f16_kv_cache_is_off_by_more_than_float32(gguf, llama_scorer):
    from loglik.audit.engine import audit_engine

    proc, url = start(gguf)
    try:
        report = audit_engine(url, llama_scorer, checks=("alignment", "agreement"))
    finally:
        stop(proc)
    agreement = report.check("agreement")
    assert agreement.status == "fail"
    assert 1e-4 < agreement.details["max_abs_diff"] < 5e-2   # passes a 16-bit tolerance
