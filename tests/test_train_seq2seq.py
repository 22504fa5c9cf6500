"""``loglik train`` on encoder-decoder models (T5, BART): the objective is exactly
-log Pr(y|x) as ``loglik score`` computes it, matches a float64 reference (full forward,
log_softmax in float64, gather) in value and gradient, does not depend on padding or batch
neighbours, and a short CLI run lowers the held-out NLL and saves a folder that scores to
the number the trainer's evaluation reported."""

from __future__ import annotations

import json
import random

import pytest
import torch

import loglik
from loglik import Scorer
from loglik.cli import main
from loglik.errors import ConfigError, InputError
from loglik.objective import collate_seq2seq, response_nll
from loglik.testing import tiny_seq2seq
from loglik.types import Example

from .test_seq2seq import TOKENIZER

PAIRS = [("The capital of France is", " Paris."), ("Translate: hello", " bonjour le monde"),
         ("2+2=", "4"), ("東京は", "日本の首都。🍕"), ("empty target", "")]
WORDS = "the cat dog sat on mat red blue big small house tree".split()


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["t5", "bart"])
def s2s(request, torch_threads):
    tok = TOKENIZER[request.param]()
    model = tiny_seq2seq(request.param, tok, seed=3)
    return request.param, tok, model, Scorer.from_seq2seq(model, tok)


def _batch(model, encoded):
    config = model.config
    return collate_seq2seq(encoded, start_id=config.decoder_start_token_id,
                           pad_id=config.pad_token_id)


def _reference(model, encoded):
    """Plain formula per example: full forward, log_softmax in float64, gather; (E,)."""
    start = model.config.decoder_start_token_id
    out = []
    for e in encoded:
        y = torch.tensor([list(e.response_ids)])                            # (1, n)
        if not e.response_ids:
            out.append(torch.zeros((), dtype=torch.float64))
            continue
        dec = torch.tensor([[start, *e.response_ids[:-1]]])                 # (1, n)
        logits = model(input_ids=torch.tensor([e.context_ids]),
                       decoder_input_ids=dec).logits                        # (1, n, V)
        logp = torch.log_softmax(logits.double(), -1)                       # (1, n, V)
        out.append(-logp.gather(-1, y[..., None]).sum())
    return torch.stack(out)                                                 # (E,)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def test_collate_literal():
    from loglik.types import Encoded

    b = collate_seq2seq([Encoded((5, 1), (6, 7), "", "seq2seq"), Encoded((8,), (), "", "seq2seq")],
                        start_id=2, pad_id=0)
    assert b["input_ids"].tolist() == [[5, 1], [8, 0]]
    assert b["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["decoder_input_ids"].tolist() == [[2, 6], [2, 0]]
    assert b["decoder_attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert b["labels"].tolist() == [[6, 7], [-100, -100]]


def test_loss_is_the_scorer_sum_and_the_float64_reference(s2s):
    family, tok, model, scorer = s2s
    encoded = scorer.encoder.encode_many([Example(p, r) for p, r in PAIRS])
    assert all(e.boundary == "seq2seq" for e in encoded) and not encoded[-1].response_ids
    scores = scorer.score_encoded(encoded)

    model.zero_grad(set_to_none=True)
    loss, per_row = response_nll(model, _batch(model, encoded), reduction="sum")
    loss.backward()
    ours = _grads(model)
    model.zero_grad(set_to_none=True)
    ref = _reference(model, encoded)                                        # (E,) float64
    ref.sum().backward()
    theirs = _grads(model)
    model.zero_grad(set_to_none=True)

    # -(sum of the scorer's logprobs), row by row and in all
    torch.testing.assert_close(per_row, torch.tensor([-s.logprob for s in scores],
                                                     dtype=torch.float64), atol=1e-5, rtol=0)
    # the fp32 scalar to its own rounding (an ulp of 164 is 1.5e-5)
    assert loss.item() == pytest.approx(-sum(s.logprob for s in scores), rel=3e-7)
    torch.testing.assert_close(per_row, ref.detach(), atol=1e-5, rtol=0)
    assert per_row[-1].item() == 0.0          # the empty target adds nothing
    assert ours.keys() == theirs.keys() and len(ours) > 10
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name].float(), atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


def test_padding_and_batch_invariance(s2s):
    family, tok, model, scorer = s2s
    encoded = scorer.encoder.encode_many([Example(p, r) for p, r in PAIRS])
    with torch.no_grad():
        _, together = response_nll(model, _batch(model, encoded))
        _, reversed_ = response_nll(model, _batch(model, encoded[::-1]))
        alone = torch.cat([response_nll(model, _batch(model, [e]))[1] for e in encoded])
        mean, _ = response_nll(model, _batch(model, encoded), reduction="token_mean")
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(together, reversed_.flip(0), atol=1e-5, rtol=0)
    tokens = sum(len(e.response_ids) for e in encoded)
    assert mean.item() == pytest.approx(together.sum().item() / tokens, rel=1e-6)


def _records(path, n, seed):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        w = rng.sample(WORDS, 3)
        lines.append(json.dumps({"prompt": "copy: " + " ".join(w), "response": " " + " ".join(w)}))
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _saved(tmp_path, family, tok, model):
    folder = tmp_path / family
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_cli_train_lowers_heldout_nll_and_the_folder_scores_the_same(tmp_path, s2s, capsys):
    family, tok, model, _ = s2s
    folder = _saved(tmp_path, family, tok, model)
    train = _records(tmp_path / "train.jsonl", 48, seed=1)
    held = _records(tmp_path / "held.jsonl", 8, seed=2)
    out = tmp_path / "out"
    argv = ["train", train, "--model", folder, "-o", str(out), "--eval", held, "--epochs", "2",
            "--lr", "3e-3", "--no-eval-train"]
    assert main(argv) == 0
    assert "padded rows (packing is for causal models)" in capsys.readouterr().err
    epochs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()
              if json.loads(x)["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [0, 1, 2]
    assert epochs[-1]["eval"]["logprob"] > epochs[0]["eval"]["logprob"] + 20
    scores = tmp_path / "scores.jsonl"
    assert main(["score", held, "--model", str(out), "-o", str(scores)]) == 0
    total = sum(json.loads(x)["logprob"] for x in scores.read_text().splitlines())
    assert total == pytest.approx(epochs[-1]["eval"]["logprob"], abs=1e-4)


def test_lora_on_seq2seq_scores_with_the_adapter(tmp_path, torch_threads):
    pytest.importorskip("peft")
    tok = TOKENIZER["bart"]()
    folder = _saved(tmp_path, "bart", tok, tiny_seq2seq("bart", tok, seed=3))
    train = _records(tmp_path / "train.jsonl", 24, seed=1)
    out = tmp_path / "out"
    result = loglik.train(train, model=folder, output_dir=str(out), eval_data=train,
                          epochs=1, lr=3e-3, lora=4, eval_train=False, quiet=True)
    assert result.epochs[-1]["eval"]["logprob"] > result.epochs[0]["eval"]["logprob"]
    assert (out / "adapter_config.json").is_file()
    scorer = Scorer.from_pretrained(folder, adapter=str(out))
    stats = sum(s.logprob for s in scorer.score_many(
        [json.loads(x) for x in open(train)]))
    assert stats == pytest.approx(result.epochs[-1]["eval"]["logprob"], abs=1e-4)


def test_bad_input_is_located(tmp_path, s2s, capsys):
    family, tok, model, _ = s2s
    folder = _saved(tmp_path, family, tok, model)
    out = str(tmp_path / "o")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "answer": "b"}\n')
    assert main(["train", str(bad), "--model", folder, "-o", out]) == 2
    err = capsys.readouterr().err
    assert 'bad.jsonl line 2: missing field "response"' in err and "--response-field answer" in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"prompt": "a", "response": ""}\n')
    with pytest.raises(InputError, match="empty.jsonl.*no response tokens to train on"):
        loglik.train(str(empty), model=folder, output_dir=out)
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "yo"}]}) + "\n")
    with pytest.raises(InputError, match="chat.jsonl line 1.*messages.*encoder-decoder"):
        loglik.train(str(chat), model=folder, output_dir=out)
    text = tmp_path / "docs.txt"
    text.write_text("some text\n")
    with pytest.raises(ConfigError, match="encoder-decoder model trains on prompt/response"):
        loglik.train(str(text), model=folder, output_dir=out)


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, torch_threads):
    """BART has dropout: a resumed seq2seq run needs its RNG and data order back too."""
    import shutil

    tok = TOKENIZER["bart"]()
    folder = _saved(tmp_path, "bart", tok, tiny_seq2seq("bart", tok, seed=3))
    data = _records(tmp_path / "train.jsonl", 12, seed=1)
    out = tmp_path / "run"
    kw = dict(model=folder, output_dir=str(out), epochs=2, lr=3e-3, batch_size=4,
              save_every=1, log_every=1, eval_train=False, eval_data=data, quiet=True, seed=3)
    first = loglik.train(data, **kw)
    assert first.steps == 6
    weights = (out / "model.safetensors").read_bytes()
    log = (out / "log.jsonl").read_text().splitlines()
    shutil.rmtree(sorted((out / "checkpoints").iterdir())[-1])   # killed before the last one
    (out / "model.safetensors").unlink()
    resumed = loglik.train(data, resume=True, **kw)
    assert resumed.steps == first.steps
    assert (out / "model.safetensors").read_bytes() == weights

    def strip(lines):
        return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"} for x in lines]

    assert strip((out / "log.jsonl").read_text().splitlines()) == strip(log)
