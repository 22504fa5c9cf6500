"""loglik serve: a real uvicorn on loopback, the real openai client and plain HTTP against it."""

from __future__ import annotations

import asyncio
import json
import math
import threading
import urllib.error
import urllib.request

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

PROMPTS = ["The capital of France is Paris.", "Question: what is the answer?\nAnswer: forty-two",
           "The dog sleeps.", "東京是日本的首都。"]


@pytest.fixture(scope="module")
def server(llama_scorer):
    from loglik.serve import BackgroundServer, ServeConfig, create_app

    app = create_app(llama_scorer, ServeConfig(max_body_bytes=20000, max_request_tokens=600),
                     model_name="tiny")
    with BackgroundServer(app) as srv:
        yield srv


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json",
                                             **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def reference(model, ids):
    """Plain float64 log-probs of ids[1:] given the ids before each (full forward)."""
    import torch

    from loglik.logprobs import reference_logprobs

    with torch.no_grad():
        x = torch.tensor([ids])
        return reference_logprobs(model(x).logits, x)[0].tolist()


def test_completions_echo_with_openai_client(server, tiny_llama, sp_tokenizer):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
    out = client.completions.create(model="tiny", prompt=PROMPTS, echo=True, max_tokens=0,
                                    logprobs=5, temperature=0)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    for prompt, choice in zip(PROMPTS, out.choices):
        ids = [sp_tokenizer.bos_token_id] + sp_tokenizer(prompt, add_special_tokens=False
                                                         )["input_ids"]
        lp = choice.logprobs
        assert choice.text == prompt
        assert len(lp.tokens) == len(ids) and lp.token_logprobs[0] is None
        assert lp.top_logprobs[0] is None and lp.tokens[0] == "<s>"
        ref = reference(tiny_llama, ids)
        assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], ref)) < 1e-4
        assert math.isclose(sum(lp.token_logprobs[1:]), math.fsum(ref), abs_tol=1e-4)
        for top in lp.top_logprobs[1:]:   # k alternatives (+ the token), a sub-distribution
            assert 1 <= len(top) <= 6     # byte tokens all read '\ufffd': keys may collide
            assert sum(math.exp(v) for v in top.values()) <= 1 + 1e-5
        assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[1] == 0
    assert out.usage.prompt_tokens == sum(len(c.logprobs.tokens) for c in out.choices)


def test_completions_token_ids_and_shapes(server, tiny_llama):
    ids = [1, 40, 50, 60, 70, 80]
    for prompt in (ids, [ids, ids[:4]]):
        code, body, _ = post(server.url + "/v1/completions",
                             {"model": "tiny", "prompt": prompt, "echo": True, "max_tokens": 0,
                              "logprobs": 1, "return_tokens_as_token_ids": True})
        assert code == 200
        got = body["choices"][0]["logprobs"]
        assert got["tokens"] == [f"token_id:{t}" for t in ids]
        assert all(len(top) in (1, 2) for top in got["top_logprobs"][1:])   # ids never collide
        ref = reference(tiny_llama, ids)
        assert max(abs(a - b) for a, b in zip(got["token_logprobs"][1:], ref)) < 1e-4
    # vLLM's prompt_logprobs: None, then {id: {logprob, rank, decoded_token}}
    code, body, _ = post(server.url + "/v1/completions",
                         {"prompt": ids, "max_tokens": 0, "prompt_logprobs": 2})
    assert code == 200
    plp = body["choices"][0]["prompt_logprobs"]
    assert plp[0] is None and len(plp) == len(ids)
    assert abs(plp[1][str(ids[1])]["logprob"] - ref[0]) < 1e-4
    assert plp[1][str(ids[1])]["rank"] >= 1


def test_generation_greedy_matches_argmax(server, tiny_llama):
    import torch

    ids = [1, 40, 50, 60]
    code, body, _ = post(server.url + "/v1/completions",
                         {"prompt": ids, "max_tokens": 4, "temperature": 0, "logprobs": 1,
                          "return_tokens_as_token_ids": True})
    assert code == 200
    seq = list(ids)
    with torch.no_grad():
        for _ in range(4):
            seq.append(int(tiny_llama(torch.tensor([seq])).logits[0, -1].argmax()))
    choice = body["choices"][0]
    assert choice["logprobs"]["tokens"] == [f"token_id:{t}" for t in seq[4:]]
    ref = reference(tiny_llama, seq)
    assert max(abs(a - b) for a, b in zip(choice["logprobs"]["token_logprobs"], ref[3:])) < 1e-4
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert choice["finish_reason"] == "length"


def test_generation_stops_at_a_stop_string(server, sp_tokenizer):
    body = {"prompt": [1, 40, 50, 60], "max_tokens": 8, "temperature": 0}
    _, free, _ = post(server.url + "/v1/completions", body)
    text = free["choices"][0]["text"]
    stop = text[len(text) // 2:][:2] if len(text) > 2 else None
    if not stop or not stop.strip():
        pytest.skip(f"greedy text {text!r} has no usable stop string")
    _, cut, _ = post(server.url + "/v1/completions", {**body, "stop": stop, "logprobs": 0})
    choice = cut["choices"][0]
    assert choice["text"] == text[:text.find(stop)] and choice["finish_reason"] == "stop"
    assert len(choice["logprobs"]["tokens"]) == cut["usage"]["completion_tokens"] <= 8
    assert choice["logprobs"]["text_offset"][0] == 0


def test_score_endpoint_equals_loglik_score_records(server, llama_scorer):
    pairs = [{"prompt": "The capital of France is", "response": " Paris.", "id": "a"},
             {"prompt": "The capital of France is ", "response": "Rome."},
             {"prompt": "", "response": "The dog sleeps."}]
    code, body, _ = post(server.url + "/v1/score", {"pairs": pairs, "options": {"top_k": 2}})
    assert code == 200
    want = [s.to_record() for s in llama_scorer.score_many(pairs, top_k=2)]
    assert [sorted(r) for r in body] == [sorted(r) for r in want]
    for got, exp in zip(body, want):
        assert got["tokens"] == exp["tokens"] and got["boundary"] == exp["boundary"]
        assert abs(got["logprob"] - exp["logprob"]) < 1e-5
    assert body[0]["id"] == "a"


@pytest.mark.parametrize("body,status,param", [
    ({"prompt": "x", "logprobs": 50}, 422, "logprobs"),
    ({"prompt": "x", "max_tokens": -1}, 422, "max_tokens"),
    ({"prompt": [[1, 2], "x", [10 ** 9]]}, 422, "prompt"),
    ({"prompt": []}, 422, "prompt"),
    ({"echo": True}, 422, "prompt"),
    ({"prompt": "x", "temperature": "hot"}, 422, "temperature"),
    ({"prompt": "x", "model": "gpt-9"}, 404, "model"),
    ({"prompt": "x", "stream": True}, 422, "stream"),
    ({"prompt": [[1] * 400, [1] * 400], "max_tokens": 0}, 413, "prompt"),
    ([1, 2], 422, None),
    ({"prompt": "x", "logprobs": True}, 422, "logprobs"),
    ({"prompt": "x", "stop": [1]}, 422, "stop"),
    ({"prompt": "x", "n": 2}, 422, "n"),
    ({"prompt": [[1, 2], [True]]}, 422, "prompt"),
    ({"prompt": "x " * 100, "max_tokens": 200}, 422, "prompt"),   # > the 256 context
])
def test_completions_bad_requests_are_json_4xx(server, body, status, param):
    code, out, _ = post(server.url + "/v1/completions", body)
    assert code == status, out
    assert out["error"]["param"] == param and out["error"]["message"]


def test_other_bad_requests(server):
    code, out, _ = post(server.url + "/v1/completions", None, raw=b'{"prompt": ')
    assert code == 400 and out["error"]["param"] == "body"
    code, out, _ = post(server.url + "/v1/completions", {"prompt": "x" * 30000})
    assert code == 413 and out["error"]["param"] == "body"
    code, out, _ = post(server.url + "/v1/score", {"pairs": [{"prompt": "a"}]})
    assert code == 422 and out["error"]["param"] == "pairs[0].response"
    code, out, _ = post(server.url + "/v1/score", {"pairs": [{"prompt": "a", "response": "b"}],
                                                   "options": {"bos": "never"}})
    assert code == 422 and "bos" in out["error"]["message"]
    code, out, _ = post(server.url + "/v1/score",
                        {"pairs": [{"prompt": "a " * 300, "response": "b " * 300}]})
    assert code in (413, 422) and out["error"]["message"]
    code, out, _ = post(server.url + "/v2/nothing", {})
    assert code == 404 and "routes" in out["error"]["message"]


def test_models_health_tokenize_metrics(server, sp_tokenizer):
    with urllib.request.urlopen(server.url + "/v1/models") as r:
        models = json.loads(r.read())
    assert models["data"][0]["id"] == "tiny" and models["data"][0]["max_model_len"] > 0
    with urllib.request.urlopen(server.url + "/health") as r:
        assert json.loads(r.read())["status"] == "ok"
    code, out, _ = post(server.url + "/tokenize", {"prompt": "The dog"})
    assert code == 200
    assert out["tokens"] == [1] + sp_tokenizer("The dog", add_special_tokens=False)["input_ids"]
    code, out, _ = post(server.url + "/tokenize", {"messages": [{"role": "user",
                                                                 "content": "hi"}]})
    assert code == 422 and out["error"]["param"] == "messages"   # no chat template
    with urllib.request.urlopen(server.url + "/metrics") as r:
        text = r.read().decode()
    assert 'loglik_requests_total{endpoint="completions",status="200"}' in text
    scored = next(line for line in text.splitlines()
                  if line.startswith("loglik_tokens_scored_total"))
    assert int(scored.split()[1]) > 0
    assert "loglik_batch_requests_bucket" in text and "loglik_request_seconds_sum" in text


def test_concurrent_requests_do_not_depend_on_neighbours(server):
    """The same prompt alone, then among 12 others of other lengths at once: 1e-5."""
    target = {"prompt": [1, 40, 50, 60, 70, 80, 90], "echo": True, "max_tokens": 0,
              "logprobs": 0}
    _, alone, _ = post(server.url + "/v1/completions", target)
    others = [{"prompt": [1] + list(range(30, 30 + n)), "echo": True, "max_tokens": 0,
               "logprobs": 0} for n in range(3, 40, 3)]
    results: dict[int, dict] = {}

    def go(i, body):
        results[i] = post(server.url + "/v1/completions", body)[1]

    threads = [threading.Thread(target=go, args=(i, b)) for i, b in enumerate([target] + others)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    a = alone["choices"][0]["logprobs"]["token_logprobs"][1:]
    b = results[0]["choices"][0]["logprobs"]["token_logprobs"][1:]
    assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5
    assert len(results) == 1 + len(others) and all("choices" in r for r in results.values())


def test_api_key_and_full_queue(llama_scorer):
    import os

    from loglik.serve import BackgroundServer, ServeConfig, create_app

    config = ServeConfig(api_key="s3cret", max_queue=1, batch_wait_ms=1500)
    with BackgroundServer(create_app(llama_scorer, config, model_name="tiny")) as srv:
        code, out, _ = post(srv.url + "/v1/completions", {"prompt": "x", "max_tokens": 0})
        assert code == 401 and out["error"]["param"] == "authorization"
        with urllib.request.urlopen(srv.url + "/health") as r:   # no key needed
            assert r.status == 200
        key = {"Authorization": "Bearer s3cret"}
        # Three different details: the first waits 1.5 s for company, the second waits in
        # the queue (its limit, 1), the third finds it full.
        codes: dict[int, tuple] = {}

        def go(k):
            codes[k] = post(srv.url + "/v1/completions",
                            {"prompt": [1, 2, 3], "max_tokens": 0, "logprobs": k}, key)

        first = threading.Thread(target=go, args=(1,))
        first.start()
        import time

        time.sleep(0.3)
        second = threading.Thread(target=go, args=(2,))
        second.start()
        time.sleep(0.3)
        go(3)
        first.join(30)
        second.join(30)
        assert codes[1][0] == 200 and codes[2][0] == 200
        assert codes[3][0] == 503 and codes[3][2].get("Retry-After") == "1"
        assert codes[3][1]["error"]["type"] == "server_busy"
    assert os.environ.get("LOGLIK_TEST_NEVER_SET") is None


def test_batcher_gives_each_job_its_own_results(llama_scorer):
    """Coalesced jobs get the same numbers as scoring each alone; a failing job fails alone."""
    from loglik.serve.batcher import Batcher
    from loglik.types import Request

    batcher = Batcher(llama_scorer, wait_ms=50)
    jobs = [[Request((1, 40), (50, 60, 70))], [Request((1,), (80, 90))],
            [Request((1, 40, 50), tuple(range(60, 70)))]]

    async def main():
        return await asyncio.gather(*(batcher.score(j) for j in jobs),
                                    batcher.score([Request((), (5,))]),   # no context: fails
                                    return_exceptions=True)

    try:
        out = asyncio.run(main())
    finally:
        batcher.stop()
    assert isinstance(out[3], Exception)
    for job, res in zip(jobs, out[:3]):
        alone = llama_scorer.run_requests(job)
        assert max(abs(a - b) for a, b in zip(res[0].logprobs, alone[0].logprobs)) < 1e-5
    assert batcher.metrics.batch_requests.n >= 1


def test_batcher_tokenizes_waiting_requests_in_one_call(llama_scorer, monkeypatch):
    """Text pairs of the requests waiting while the tokenizer is busy go through one
    ``encode_many`` call and get what each alone gets; a pair the encoder refuses and a job its
    ``check`` refuses fail alone, their neighbours still answered."""
    from loglik.errors import LoglikError
    from loglik.serve.batcher import Batcher
    from loglik.serve.schemas import APIError
    from loglik.types import Example

    calls: list[int] = []
    busy = threading.Event()
    encode_many = llama_scorer.encoder.encode_many

    def counted(exs):   # the first call waits until every request below is queued
        calls.append(len(exs))
        busy.wait(30)
        return encode_many(exs)

    monkeypatch.setattr(llama_scorer.encoder, "encode_many", counted)
    jobs = [[Example("The capital of France is", " Paris.")],
            [Example("The dog", " sleeps."), Example("", "An empty prompt.")],
            [Example("Question: what?\nAnswer:", " forty-two")]]
    too_long = [Example("a " * 300, "b")]                      # over the 256-token context

    def refuse(encoded):
        raise APIError(413, "pairs: too many tokens", "pairs")

    batcher = Batcher(llama_scorer, wait_ms=50)

    async def main():
        first = asyncio.ensure_future(batcher.score_examples(jobs[0]))
        while not calls:                           # the tokenizer thread holds the first job
            await asyncio.sleep(0.01)
        rest = [asyncio.ensure_future(c) for c in
                [batcher.score_examples(j) for j in jobs[1:]]
                + [batcher.score_examples(too_long), batcher.score_examples(jobs[0],
                                                                             check=refuse)]]
        await asyncio.sleep(0.1)
        busy.set()
        return await asyncio.gather(first, *rest, return_exceptions=True)

    try:
        out = asyncio.run(main())
    finally:
        busy.set()
        batcher.stop()
        monkeypatch.undo()
    assert calls[:2] == [1, 5]                 # the four requests that waited: one call
    assert isinstance(out[3], LoglikError) and "256" in str(out[3])
    assert isinstance(out[4], APIError) and out[4].status == 413
    for job, (encoded, results) in zip(jobs, out[:3]):
        assert encoded == llama_scorer.encoder.encode_many(job)
        alone = llama_scorer.score_many(job)
        assert [len(r.logprobs) for r in results] == [s.num_tokens for s in alone]
        for res, score in zip(results, alone):
            assert abs(math.fsum(res.logprobs) - score.logprob) < 1e-5


def test_eos_generated_is_in_the_logprobs_not_the_text(tiny_llama, sp_tokenizer):
    """A model whose greedy next token is always EOS: ``echo`` + ``max_tokens=1`` still returns
    one entry past the prompt (lm-eval's local-completions drops the last entry as the
    generated one), the text has no ``</s>``, and finish_reason is "stop"."""
    import copy

    import torch

    from loglik import Scorer
    from loglik.serve import BackgroundServer, create_app

    model = copy.deepcopy(tiny_llama)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[sp_tokenizer.eos_token_id] = 1e4
    model.lm_head = head
    ids = [1, 40, 50, 60]
    with BackgroundServer(create_app(Scorer.from_hf(model, sp_tokenizer))) as srv:
        code, body, _ = post(srv.url + "/v1/completions",
                             {"prompt": ids, "echo": True, "max_tokens": 1, "logprobs": 1,
                              "temperature": 0})
    assert code == 200, body
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop" and "</s>" not in choice["text"]
    lp = choice["logprobs"]
    assert len(lp["tokens"]) == len(ids) + 1 and lp["tokens"][-1] == "</s>"
    assert lp["token_logprobs"][-1] > -1e-3            # the bias makes EOS certain
    assert body["usage"]["completion_tokens"] == 1
