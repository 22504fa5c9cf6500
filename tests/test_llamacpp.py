"""GGUF models through llama.cpp: the same token ids and log-probs as the HF backend.

GGUF files are written from the suite's tiny HF models (loglik.testing_gguf): a Llama with
the SentencePiece-style tokenizer and a Qwen2 with the byte-level BPE one. The yardstick is
the HF model's full forward with the log-softmax in float64 (reference_logprobs).
"""

from __future__ import annotations

import json
import re
import math

import pytest
import torch

pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: "
                    "pip install 'loglik[llamacpp]'")
pytest.importorskip("gguf", reason="the gguf package is not installed: "
                    "pip install 'loglik[llamacpp]'")

from loglik import Scorer  # noqa: E402
from loglik.errors import BackendError, ContextLengthError, ModelLoadError  # noqa: E402
from loglik.logprobs import reference_logprobs  # noqa: E402
from loglik.testing import CORPUS, tiny_model  # noqa: E402
from loglik.testing_gguf import write_gguf  # noqa: E402
from loglik.tokenize import Encoder  # noqa: E402
from loglik.types import Request  # noqa: E402

from .test_tokenize import ADVERSARIAL  # noqa: E402

pytestmark = pytest.mark.llamacpp

PAIRS = [(p, r) for p, r in ADVERSARIAL if r.strip()] + [
    ("Question: what is the answer?\nAnswer:", " the answer is forty-two."),
    ("def add(a, b):\n", '    """Return the sum of a and b."""\n    return a + b'),
]
# the boundary set: prompts, responses and their joins, and texts that start with spaces
# (llama.cpp's dummy prefix would add a second "▁" before them; GGUFTokenizer does not)
BOUNDARY_TEXTS = ([p for p, _ in ADVERSARIAL] + [r for _, r in ADVERSARIAL]
                  + [p + r for p, r in ADVERSARIAL]
                  + [" ", "  ", " hello", "  hello world", " \nx", "\t x", " 🍕", "   ."])
# largest per-sequence |GGUF - HF float64 reference| seen, per file (printed with -s)
SEEN: dict[str, float] = {}


@pytest.fixture(scope="module")
def tiny_qwen2(bpe_tokenizer, torch_threads):
    return tiny_model("qwen2", len(bpe_tokenizer), scale=10.0)


@pytest.fixture(scope="module")
def models(tiny_llama, sp_tokenizer, tiny_qwen2, bpe_tokenizer):
    """name -> (HF model, HF tokenizer)."""
    return {"llama": (tiny_llama, sp_tokenizer), "qwen2": (tiny_qwen2, bpe_tokenizer)}


@pytest.fixture(scope="module")
def gguf_files(tmp_path_factory, models):
    """(name, dtype) -> path of the GGUF file written from the tiny HF model."""
    root = tmp_path_factory.mktemp("gguf")
    return {(name, dtype): str(write_gguf(model, tok, root / f"{name}-{dtype}.gguf", dtype=dtype))
            for name, (model, tok) in models.items() for dtype in ("f32", "f16", "q8_0")}


@pytest.fixture(scope="module")
def gguf_scorers(gguf_files):
    return {name: Scorer.from_pretrained(gguf_files[name, "f32"], threads=1)
            for name in ("llama", "qwen2")}


def hf_reference(model, context_ids, response_ids):
    """Per-token log-probs of the response: full fp32 forward, log_softmax in float64."""
    ids = torch.tensor([list(context_ids) + list(response_ids)])
    with torch.no_grad():
        logits = model(ids).logits                                        # (1, T, V)
    lp = reference_logprobs(logits, ids)[0]                               # (T-1,)
    return lp[len(context_ids) - 1:].tolist()


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_same_token_ids_as_hf_tokenizer(name, models, gguf_scorers):
    hf = models[name][1]
    gguf = gguf_scorers[name].tokenizer
    texts = BOUNDARY_TEXTS + CORPUS.splitlines(True)[:16] + [CORPUS[:600]]
    expected = hf(texts, add_special_tokens=False)["input_ids"]
    for text, ours, theirs in zip(texts, gguf.encode_batch(texts), expected):
        assert ours == theirs, (text, gguf.convert_ids_to_tokens(ours),
                                hf.convert_ids_to_tokens(theirs))
    assert (gguf.bos_token_id, gguf.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    assert gguf.adds_bos == (name == "llama")
    assert len(gguf) == len(hf)
    ids = hf("Hello world 🍕", add_special_tokens=False)["input_ids"]
    assert gguf.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)


@pytest.mark.parametrize("style", ["llama2", "metaspace_always"])
def test_other_metaspace_tokenizers_give_hf_ids(style, tmp_path, torch_threads):
    """Metaspace with split=False (Llama-2 as transformers converts it) and
    prepend_scheme="always" (T5-like, no BOS): the same ids as HF on the boundary set."""
    from loglik import testing

    hf = getattr(testing, f"{style}_tokenizer")()
    path = write_gguf(tiny_model("llama", len(hf)), hf, tmp_path / f"{style}.gguf")
    gguf = Scorer.from_pretrained(str(path), threads=1).tokenizer
    texts = BOUNDARY_TEXTS + CORPUS.splitlines(True)[:8]
    expected = hf(texts, add_special_tokens=False)["input_ids"]
    assert gguf.encode_batch(texts) == expected
    assert (gguf.bos_token_id, gguf.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)


def test_dummy_prefix_always_is_llama_cpp_own(gguf_files, sp_tokenizer):
    """dummy_prefix="always": llama.cpp's SentencePiece behaviour, one more "▁" before a
    text that starts with a space (what the HF tokenizer gives for that text with a space
    in front)."""
    from loglik.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend.from_file(gguf_files["llama", "f32"], threads=1,
                                        dummy_prefix="always")
    ids = backend.tokenizer.encode_batch([" hello", "hello"])
    assert ids == sp_tokenizer(["  hello", "hello"], add_special_tokens=False)["input_ids"]
    assert ids[0] != sp_tokenizer(" hello", add_special_tokens=False)["input_ids"]
    backend.close()


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("prompt,response", ADVERSARIAL + [(" leading", " space"),
                                                           ("  two", "spaces")])
def test_same_boundary_and_bos_decisions_as_hf(name, prompt, response, models, gguf_scorers):
    hf = Encoder(models[name][1]).encode(prompt, response)
    ours = Encoder(gguf_scorers[name].tokenizer).encode(prompt, response)
    assert (ours.context_ids, ours.response_ids, ours.boundary) == (
        hf.context_ids, hf.response_ids, hf.boundary)


@pytest.mark.parametrize("name,special", [("llama", "<s>"), ("llama", "</s>"),
                                          ("qwen2", "<|endoftext|>")])
def test_special_token_strings_in_text_are_text(name, special, models, gguf_scorers):
    hf = models[name][1]
    text = f"Hello {special} world"
    ids = gguf_scorers[name].tokenizer.encode_batch([text])[0]
    assert ids == hf(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert hf.convert_tokens_to_ids(special) not in ids


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_logprobs_match_hf_float64_reference(name, models, gguf_scorers):
    model, _ = models[name]
    scorer = gguf_scorers[name]
    scores = scorer.score_many(PAIRS)
    worst = 0.0
    for (prompt, response), s in zip(PAIRS, scores):
        enc = scorer.encode(prompt, response)
        ref = hf_reference(model, enc.context_ids, enc.response_ids)
        assert s.token_ids == list(enc.response_ids)
        assert len(s.token_logprobs) == len(ref)
        worst = max(worst, abs(s.logprob - math.fsum(ref)))
        assert s.token_greedy == [bool(g) for g in s.token_greedy]
    SEEN[f"{name}-f32"] = worst
    print(f"\n{name} F32 GGUF vs HF float64 reference: max |diff| {worst:.2e} nats/sequence")
    assert worst < 1e-3


@pytest.mark.parametrize("name", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype,bound", [("f16", 0.05), ("q8_0", 0.5)])
def test_quantized_files_stay_close(name, dtype, bound, models, gguf_files):
    """F16 and Q8_0 round the weights: close to the F32 numbers, not equal to them."""
    model, _ = models[name]
    scorer = Scorer.from_pretrained(gguf_files[name, dtype], threads=1)
    diffs = []
    for s, (prompt, response) in zip(scorer.score_many(PAIRS), PAIRS):
        enc = scorer.encode(prompt, response)
        diffs.append(abs(s.logprob - math.fsum(hf_reference(model, enc.context_ids,
                                                              enc.response_ids))))
    print(f"\n{name} {dtype} GGUF vs HF: max |diff| {max(diffs):.3g}, mean "
          f"{sum(diffs) / len(diffs):.3g} nats/sequence")
    assert 0 < max(diffs) < bound


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_shared_context_and_packing_equal_scoring_alone(name, gguf_files):
    path = gguf_files[name, "f32"]
    shared = Scorer.from_pretrained(path, threads=1)
    alone = Scorer.from_pretrained(path, threads=1, share_context=False, pack=False)
    prompt = "The quick brown fox jumps over the lazy dog. Question: what is the answer?"
    choices = [" Paris.", " the answer is forty-two.", " Rome", " 🍕!", " x" * 20]
    together = shared.score_choices(prompt, choices, rank=True, entropy=True, top_k=3)
    assert shared.last_plan.sharing_saved > 0.5
    singles = [alone.score(prompt, c, rank=True, entropy=True, top_k=3) for c in choices]
    for a, b in zip(together, singles):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.token_ranks == b.token_ranks
        assert a.token_entropies == pytest.approx(b.token_entropies, abs=1e-4)
        assert [t for t, _ in a.token_top[0]] == [t for t, _ in b.token_top[0]]
    mixed = shared.score_many(PAIRS + [(prompt, c) for c in choices])
    for s, (p, r) in zip(mixed, PAIRS + [(prompt, c) for c in choices]):
        assert s.logprob == pytest.approx(alone.score(p, r).logprob, abs=1e-4)


def test_detail_matches_full_distributions(gguf_scorers):
    scorer = gguf_scorers["llama"]
    backend = scorer.backend
    enc = scorer.encode("The capital of France is", " Paris. The dog sleeps.")
    req = Request(enc.context_ids, enc.response_ids)
    logp = backend.log_distributions(backend.prepare([req])).double()      # (n, V)
    assert logp.shape == (len(enc.response_ids), backend.vocab_size)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(len(enc.response_ids),
                                                          dtype=torch.float64), atol=1e-5)
    s = scorer.score("The capital of France is", " Paris. The dog sleeps.", rank=True,
                     entropy=True, top_k=2)
    targets = torch.tensor(enc.response_ids)
    expected = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    assert s.token_logprobs == pytest.approx(expected.tolist(), abs=1e-4)
    assert s.token_ranks == ((logp > expected.unsqueeze(-1)).sum(-1) + 1).tolist()
    assert s.token_entropies == pytest.approx((-(logp.exp() * logp).sum(-1)).tolist(), abs=1e-4)
    assert s.token_greedy == (logp.argmax(-1) == targets).tolist()


def test_from_llama_gives_the_same_scores(gguf_files, gguf_scorers):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=gguf_files["llama", "f32"], n_ctx=256, n_threads=1,
                          verbose=False)
    scorer = Scorer.from_llama(llm)
    assert scorer.backend.max_length == 256
    got = [s.logprob for s in scorer.score_many(PAIRS[:6])]
    want = [s.logprob for s in gguf_scorers["llama"].score_many(PAIRS[:6])]
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_echo_path_token_logprobs_are_off_by_one_without_bos(name, models, gguf_files):
    """Why bench/ does not sum llama-cpp-python's echo ``token_logprobs`` (#1276, #1983).

    ``create_completion(echo=True, logprobs=1)`` pairs the prompt's tokens with the rows of
    its logits buffer after dropping a leading BOS: with a BOS (Llama) entry i is
    log Pr(t_i | t_<i) and the first token's entry is None; without one (Qwen2) entry i is
    log-softmax(row i)[t_i], the distribution that predicts t_i+1 read at t_i, which no
    shift of the list repairs. If this fails, llama-cpp-python changed: update
    bench/worker.py run_echo and the README's GGUF section."""
    import llama_cpp

    model, tok = models[name]
    text = "The quick brown fox jumps over the lazy dog."
    llm = llama_cpp.Llama(model_path=gguf_files[name, "f32"], n_ctx=64, n_threads=1,
                          logits_all=True, type_k=0, type_v=0, verbose=False)   # F32 cache
    out = llm.create_completion(text, max_tokens=1, echo=True, logprobs=1, temperature=0.0)
    echoed = out["choices"][0]["logprobs"]["token_logprobs"]
    ids = llm._input_ids.tolist()                                     # what was evaluated
    assert ids == tok(text)["input_ids"]
    with torch.no_grad():
        logp = reference_logprobs(model(torch.tensor([ids])).logits,   # (T-1,): entry i is
                                  torch.tensor([ids]))[0].tolist()    # log Pr(t_i+1 | t_<=i)
    bos = ids[0] == tok.bos_token_id
    assert bos == (name == "llama")
    assert echoed[0] is None
    if bos:   # entry i (BOS dropped) is token i+1 of ids: aligned, the first one lost
        assert echoed[1:len(ids) - 1] == pytest.approx(logp[1:], abs=1e-4)
    else:     # entry i is row i's log-prob of token i itself
        with torch.no_grad():
            rows = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        misread = [rows[i, ids[i]].item() for i in range(1, len(ids))]
        assert echoed[1:len(ids)] == pytest.approx(misread, abs=1e-4)
        assert max(abs(a - b) for a, b in zip(echoed[1:len(ids)], logp)) > 0.1   # not them


def test_missing_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Scorer.from_pretrained(str(tmp_path / "nope.gguf"))


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text('{"not": "a model"}')
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        Scorer.from_pretrained(str(path))


def test_truncated_file(tmp_path, gguf_files):
    data = open(gguf_files["llama", "f32"], "rb").read()
    for cut in (len(data) // 2, 200):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match="truncated"):
            Scorer.from_pretrained(str(path))


def test_unknown_architecture(tmp_path):
    import gguf
    import numpy as np

    path = tmp_path / "alien.gguf"
    writer = gguf.GGUFWriter(str(path), "alienformer")
    writer.add_context_length(64)
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="'alienformer'.*unknown model architecture"):
        Scorer.from_pretrained(str(path))


def test_context_overflow(gguf_files):
    scorer = Scorer.from_pretrained(gguf_files["qwen2", "f32"], max_length=16, threads=1)
    with pytest.raises(ContextLengthError, match="context is 16"):
        scorer.score("The quick brown fox jumps over the lazy dog. " * 3, " The dog sleeps.")
    with pytest.raises(BackendError, match="needs 40 tokens but the context is 16"):
        scorer.backend.score([Request(tuple(range(1, 31)), tuple(range(1, 12)))])
    assert Scorer.from_pretrained(gguf_files["qwen2", "f32"]).backend.max_length == 256


def test_dtype_is_a_property_of_the_file(gguf_files):
    from loglik.errors import ConfigError

    with pytest.raises(ConfigError, match="drop --dtype"):
        Scorer.from_pretrained(gguf_files["llama", "f32"], dtype="bfloat16")


def test_cli_commands_take_a_gguf_model(tmp_path, gguf_files, gguf_scorers, models, capsys):
    from loglik.cli import main

    path = gguf_files["llama", "f32"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"id": i, "prompt": p, "response": r}) + "\n"
                             for i, (p, r) in enumerate(PAIRS[:5])))
    out = tmp_path / "scores.jsonl"
    assert main(["score", str(pairs), "--model", path, "-o", str(out), "--threads", "1"]) == 0
    got = [json.loads(line)["logprob"] for line in out.read_text().splitlines()]
    want = [s.logprob for s in gguf_scorers["llama"].score_many(PAIRS[:5])]
    assert got == pytest.approx(want, abs=1e-6)

    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": CORPUS[:400]}) + "\n")
    out_docs = tmp_path / "docs-scores.jsonl"
    assert main(["score", str(docs), "--text-field", "text", "--model", path,
                 "-o", str(out_docs)]) == 0
    assert json.loads(out_docs.read_text())["logprob"] < 0

    hf_dir = tmp_path / "hf"
    model, tok = models["llama"]
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    assert main(["compare", str(pairs), "--model", str(hf_dir), "--model", path]) == 0

    choices = tmp_path / "choices.jsonl"
    choices.write_text(json.dumps({"context": "The capital of France is",
                                   "choices": [" Paris", " Rome"], "gold": 0}) + "\n")
    assert main(["choose", str(choices), "--model", path]) == 0
    assert main(["explain", "--model", path, "The capital of France is", " Paris"]) == 0
    capsys.readouterr()
    main(["audit", "--model", path])      # exit 1 while the audit holds non-torch backends to
    audit = capsys.readouterr().out       # 1e-6 (it should read backend.tolerance, 1e-4)
    assert "PASS  normalisation" in audit and "PASS  tokenizer" in audit
    assert "SKIP  kv_cache" in audit


def test_compare_hf_folder_with_its_gguf_files(tmp_path, gguf_files, models, capsys):
    """`loglik compare` of an HF folder and the GGUF files written from it: one tokenization
    (token-level KL between the HF model and each file), F32 equal to float tolerance, Q8_0
    close but not equal."""
    from loglik.cli import main

    hf_dir = tmp_path / "hf"
    model, tok = models["llama"]
    model.save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n"
                             for p, r in PAIRS + [("  leading spaces", " here")]))
    assert main(["compare", str(pairs), "--model", str(hf_dir), "--model",
                 gguf_files["llama", "f32"], "--model", gguf_files["llama", "q8_0"],
                 "--name", "hf", "--name", "f32", "--name", "q8_0", "--top", "1",
                 "--threads", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {m["tokenizer_group"] for m in report["models"]} == {0}
    pair = {(p["a"], p["b"]): p for p in report["pairs"]}
    f32, q8 = pair["hf", "f32"], pair["hf", "q8_0"]
    assert f32["basis"] == q8["basis"] == "tokens"
    assert abs(f32["largest"][0]["diff"]) < 1e-3                 # per sequence, nats
    assert f32["token_stats"]["kl_mean"] < 1e-6
    assert f32["token_stats"]["same_top1_rate"] == 1.0
    assert 0 < abs(q8["largest"][0]["diff"]) < 0.5
    assert 1e-7 < q8["token_stats"]["kl_mean"] < 1e-2
    assert q8["token_stats"]["num_tokens"] == f32["token_stats"]["num_tokens"] > len(PAIRS)
    print(f"\nHF vs GGUF F32: max |diff| {abs(f32['largest'][0]['diff']):.2e} nats/sequence, "
          f"KL mean {f32['token_stats']['kl_mean']:.2e}; Q8_0: max |diff| "
          f"{abs(q8['largest'][0]['diff']):.3g}, KL mean {q8['token_stats']['kl_mean']:.2e}")


def test_cli_gguf_errors_are_one_line(tmp_path, gguf_files, capsys, monkeypatch):
    """Missing file (a bare name, not taken for a hub id), not GGUF, unknown architecture,
    context overflow: `loglik score` exits 2 with one line naming the file and the fix."""
    import gguf
    import numpy as np

    from loglik.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.gguf").write_text('{"not": "a model"}')
    writer = gguf.GGUFWriter(str(tmp_path / "alien.gguf"), "alienformer")
    writer.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "The capital of France is", "response": " Paris"})
                     + "\n")
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "The quick brown fox. " * 80, "response": " x"})
                    + "\n")
    cases = [(pairs, "nope.gguf", "GGUF file 'nope.gguf' not found"),
             (pairs, "bad.gguf", "not a GGUF file"),
             (pairs, "alien.gguf", "unknown model architecture: 'alienformer'"),
             (long, gguf_files["llama", "f32"], "line 1: example needs .* the model's context "
              "is 256; pass truncate='left'")]
    for data, model, message in cases:
        assert main(["score", str(data), "--model", model, "-o", str(tmp_path / "o.jsonl"),
                     "--threads", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), err
