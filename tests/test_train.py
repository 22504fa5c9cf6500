"""loglik.train / 'loglik train': pre-training from a config on text, fine-tuning on pairs,
per-epoch numbers equal to the scorer's, checkpoints, exact resume, clear errors."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import loglik
from loglik.cli import main
from loglik.errors import ConfigError, InputError, TrainingError
from loglik.trainer import lr_factor

CAPITALS = [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Peru", "Lima"),
            ("Chile", "Santiago"), ("Kenya", "Nairobi")]
TEXT = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "The quick brown fox jumps over the lazy dog.\nThe dog sleeps.",
    "Machine learning models compute probabilities of tokens given a context.",
    "The log-likelihood of a response is the sum of its token log-probabilities.",
    "She said: \"Hello, world!\" and he replied, \"Goodbye...\"",
    "def add(a, b):\n    return a + b",
]
HELDOUT = ["The capital of Italy is Rome. The dog sleeps.",
           "The log-likelihood of a model is a sum."]


@pytest.fixture(autouse=True)
def one_thread(torch_threads):
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _pairs(path: Path, items) -> str:
    path.write_text("".join(json.dumps({"prompt": f"The capital of {c} is ", "response": f"{p}."})
                            + "\n" for c, p in items))
    return str(path)


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _epochs(out: Path) -> list[dict]:
    return [r for r in _log(out) if r["kind"] == "epoch"]


def _without_speed(records):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in records]


def test_lr_schedule_literal():
    assert [round(lr_factor(s, 2, 10, 0.1), 4) for s in (0, 1, 2, 6, 10, 12)] == \
        [0.3333, 0.6667, 1.0, 0.55, 0.1, 0.1]
    assert lr_factor(0, 0, 4, 0.0) == 1.0 and lr_factor(4, 0, 4, 0.0) == pytest.approx(0.0)


def test_pretrain_from_config_on_text(tmp_path, sp_tokenizer, capsys):
    """A config + tokenizer, a .txt file: every token a response token; held-out rises; the
    logged number is what the scorer gives the saved model for ("", document)."""
    from loglik.testing import tiny_config

    sp_tokenizer.save_pretrained(tmp_path / "tok")
    tiny_config("llama", len(sp_tokenizer)).save_pretrained(tmp_path / "cfg")
    (tmp_path / "train.txt").write_text("\n\n".join(TEXT) + "\n")
    (tmp_path / "heldout.txt").write_text("\n\n\n".join(HELDOUT))
    out = tmp_path / "out"
    rc = main(["train", str(tmp_path / "train.txt"), "--model", str(tmp_path / "cfg/config.json"),
               "--tokenizer", str(tmp_path / "tok"), "-o", str(out), "--eval",
               str(tmp_path / "heldout.txt"), "--epochs", "3", "--lr", "5e-3",
               "--batch-tokens", "256", "--threads", "1", "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "epoch 3/3" in err and "eval logprob" in err
    epochs = _epochs(out)
    assert [r["epoch"] for r in epochs] == [0, 1, 2, 3]
    assert epochs[0]["train"]["num_examples"] == len(TEXT)
    assert epochs[0]["eval"]["num_examples"] == len(HELDOUT)
    held = [r["eval"]["logprob"] for r in epochs]
    assert all(b > a for a, b in zip(held, held[1:])), held
    assert "/token" in err and "nan" not in err
    # the same command with --resume on the finished run: nothing to train, no "nan tokens/s"
    rc = main(["train", str(tmp_path / "train.txt"), "--model", str(tmp_path / "cfg/config.json"),
               "--tokenizer", str(tmp_path / "tok"), "-o", str(out), "--eval",
               str(tmp_path / "heldout.txt"), "--epochs", "3", "--lr", "5e-3",
               "--batch-tokens", "256", "--threads", "1", "--no-progress", "--resume"])
    said = capsys.readouterr().out
    assert rc == 0 and "nan" not in said and "nothing left to train" in said, said
    scorer = loglik.Scorer.from_pretrained(str(out))
    scores = scorer.score_many([("", doc) for doc in HELDOUT])
    assert math.fsum(s.logprob for s in scores) == pytest.approx(held[-1], abs=1e-6)
    assert sum(s.num_tokens for s in scores) == epochs[-1]["eval"]["num_tokens"]
    ckpts = sorted((out / "checkpoints").iterdir())
    assert [p.name for p in ckpts] == ["step-00000002", "step-00000003"]   # keep 2
    assert (ckpts[-1] / "model.safetensors").exists() and (ckpts[-1] / "tokenizer.json").exists()
    from_checkpoint = loglik.Scorer.from_pretrained(str(ckpts[-1])).score_many(
        [("", doc) for doc in HELDOUT])
    assert math.fsum(s.logprob for s in from_checkpoint) == pytest.approx(held[-1], abs=1e-6)


def test_finetune_pairs_matches_loglik_score(tmp_path, tiny_model_dir, capsys):
    data = _pairs(tmp_path / "train.jsonl", CAPITALS[:8])
    held = _pairs(tmp_path / "eval.jsonl", CAPITALS[8:])
    out = tmp_path / "ft"
    result = loglik.train(data, model=tiny_model_dir, output_dir=str(out), eval_data=held,
                          epochs=2, lr=3e-3, batch_tokens=64, threads=1, log_every=1)
    assert result.steps == len([r for r in _log(out) if r["kind"] == "step"])
    assert result.tokens_per_s > 0
    train_lp = [r["train"]["logprob"] for r in result.epochs]
    assert train_lp[-1] > train_lp[0]
    rc = main(["score", held, "--model", str(out), "-o", str(tmp_path / "scores.jsonl")])
    assert rc == 0
    scored = [json.loads(x) for x in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert math.fsum(r["logprob"] for r in scored) == pytest.approx(
        result.epochs[-1]["eval"]["logprob"], abs=1e-6)


def test_resume_equals_uninterrupted_run(tmp_path, tiny_gpt2_dir):
    """GPT-2 has dropout: resuming mid-epoch needs the RNG state and the data order back."""
    data = _pairs(tmp_path / "train.jsonl", CAPITALS)
    held = _pairs(tmp_path / "eval.jsonl", CAPITALS[:3])
    out = tmp_path / "run"
    kw = dict(model=tiny_gpt2_dir, output_dir=str(out), epochs=2, lr=3e-3, batch_tokens=64,
              save_every=1, log_every=1, eval_every=1, eval_data=held, threads=1, seed=3,
              quiet=True)
    first = loglik.train(data, **kw)
    steps_per_epoch = first.steps // 2
    assert steps_per_epoch >= 2
    weights = (out / "model.safetensors").read_bytes()
    log = _log(out)
    ckpts = sorted((out / "checkpoints").iterdir())
    shutil.rmtree(ckpts[-1])          # as if killed before the last checkpoint was written
    (out / "model.safetensors").unlink()
    kinds = [r["kind"] for r in log]
    assert kinds.count("eval") == first.steps - 2 and kinds.count("epoch") == 3
    resumed = loglik.train(data, resume=True, **kw)
    assert resumed.steps == first.steps
    assert (out / "model.safetensors").read_bytes() == weights
    assert _without_speed(_log(out)) == _without_speed(log)


def test_resume_refuses_changed_options(tmp_path, tiny_model_dir):
    data = _pairs(tmp_path / "train.jsonl", CAPITALS[:4])
    out = str(tmp_path / "run")
    loglik.train(data, model=tiny_model_dir, output_dir=out, lr=1e-3, threads=1, quiet=True)
    with pytest.raises(TrainingError, match=r"lr 0.001 -> 0.002"):
        loglik.train(data, model=tiny_model_dir, output_dir=out, lr=2e-3, resume=True,
                     threads=1, quiet=True)
    with pytest.raises(ConfigError, match="already holds checkpoints"):
        loglik.train(data, model=tiny_model_dir, output_dir=out, threads=1, quiet=True)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, tiny_model_dir, monkeypatch):
    import loglik.objective as objective

    real, calls = objective.response_nll, []

    def poisoned(*args, **kwargs):
        loss, rows = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) >= 2 else loss), rows

    monkeypatch.setattr(objective, "response_nll", poisoned)
    data = _pairs(tmp_path / "train.jsonl", CAPITALS[:8])
    out = tmp_path / "run"
    with pytest.raises(TrainingError) as info:
        loglik.train(data, model=tiny_model_dir, output_dir=str(out), epochs=2,
                     batch_tokens=4096, threads=1, quiet=True)   # one step per epoch
    msg = str(info.value)
    assert "loss became nan at step 2 (epoch 2, micro-batch 1 of the step, 8 examples" in msg
    assert "step-00000001" in msg and "--resume" in msg
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (out / "model.safetensors").exists()


def test_grad_accum_bf16_and_text_field(tmp_path, tiny_model_dir):
    records = [{"text": t} for t in TEXT] + [{"text": "x " * 300}]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = loglik.train(str(path), model=tiny_model_dir, output_dir=str(tmp_path / "o"),
                          text_field="text", block_size=40, grad_accum=2, precision="bf16",
                          batch_tokens=128, threads=1, quiet=True)
    last = result.epochs[-1]["train"]
    assert last["num_examples"] > len(records)     # the long document became several blocks
    assert math.isfinite(last["logprob"]) and last["num_tokens"] > 300


def test_text_blocks_cover_the_document(sp_tokenizer):
    from loglik.tokenize import Encoder
    from loglik.train_data import load_text

    encoder = Encoder(sp_tokenizer)
    doc = " ".join(TEXT)

    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(doc)
    blocks = load_text(f.name, encoder, block_size=10)
    whole = encoder.encode("", doc)
    assert [t for b in blocks for t in b.response_ids] == list(whole.response_ids)
    assert all(len(b.response_ids) <= 10 for b in blocks)
    assert all(b.context_ids == (sp_tokenizer.bos_token_id,) for b in blocks)


def test_bad_input_errors(tmp_path, tiny_model_dir, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "a", "answer": "b"}\n')
    rc = main(["train", str(bad), "--model", tiny_model_dir, "-o", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert 'bad.jsonl line 2: missing field "response"' in err and "--response-field answer" in err
    with pytest.raises(InputError, match='line 1: missing field "body"'):
        loglik.train(str(bad), model=tiny_model_dir, output_dir=str(tmp_path / "o2"),
                     text_field="body")


def test_config_needs_a_fitting_tokenizer(tmp_path, sp_tokenizer):
    from loglik.testing import tiny_config

    tiny_config("llama", 50).save_pretrained(tmp_path / "cfg")
    sp_tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "t.txt").write_text("hello")
    with pytest.raises(ConfigError, match="pass --tokenizer"):
        loglik.train(str(tmp_path / "t.txt"), model=str(tmp_path / "cfg"),
                     output_dir=str(tmp_path / "o"))
    with pytest.raises(ConfigError, match=r"vocab_size is 50; set vocab_size >= \d+"):
        loglik.train(str(tmp_path / "t.txt"), model=str(tmp_path / "cfg/config.json"),
                     tokenizer=str(tmp_path / "tok"), output_dir=str(tmp_path / "o"))


def test_options_are_validated():
    from loglik.trainer import TrainOptions

    with pytest.raises(ConfigError, match=r"lr \(--lr\) must be > 0, got -1"):
        TrainOptions(lr=-1)
    with pytest.raises(ConfigError, match="precision must be 'fp32' or 'bf16'"):
        TrainOptions(precision="fp16")


def test_cli_flags_mirror_the_keyword_arguments():
    import dataclasses
    import inspect

    from loglik.cli import build_parser
    from loglik.trainer import TrainOptions, train

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    dests = {a.dest for a in sub.choices["train"]._actions}
    keywords = {f.name for f in dataclasses.fields(TrainOptions)}
    keywords |= set(inspect.signature(train).parameters) - {"options", "fields", "quiet"}
    assert keywords - dests == set()


def test_epoch_plan_is_a_seeded_permutation_within_the_token_budget():
    from loglik.train_data import plan_epoch, row_length
    from loglik.types import Encoded

    encoded = [Encoded((1,), tuple(range(2, 2 + n)), "", "joint")
               for n in [3, 3, 3, 3, 5, 1, 7, 3]]
    a = plan_epoch(encoded, 16, seed=0, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(len(encoded)))
    assert all(len(b) * max(row_length(encoded[i]) for i in b) <= 16 or len(b) == 1 for b in a)
    assert plan_epoch(encoded, 16, seed=0, epoch=0) == a              # same seed, same order
    assert {plan_epoch(encoded, 16, seed=0, epoch=e)[0] for e in range(6)} != {a[0]}


def test_checkpoints_without_a_plan_version_resume_in_their_own_order():
    """Checkpoints written before the examples were permuted (no "plan_version") resume
    with the order they were trained in: planned in input order, then batches shuffled."""
    import random

    from loglik.plan import plan_batches
    from loglik.train_data import plan_epoch, row_length
    from loglik.types import Encoded

    encoded = [Encoded((1,), tuple(range(2, 2 + n)), "", "joint")
               for n in [3, 3, 3, 3, 5, 1, 7, 3, 2, 2]]
    legacy = [b.indices for b in plan_batches([row_length(e) for e in encoded], 16).batches]
    random.Random(5 * 1_000_003 + 2).shuffle(legacy)
    assert plan_epoch(encoded, 16, seed=5, epoch=2, version=1) == legacy


def test_interrupt_names_the_checkpoint_to_resume_from(tmp_path, monkeypatch, capsys):
    import loglik.trainer

    out = tmp_path / "out"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loglik.trainer, "train", interrupted)
    argv = ["train", "data.jsonl", "--model", "m", "-o", str(out)]
    assert main(argv) == 130
    assert "before the first checkpoint" in capsys.readouterr().err
    for step in ("step-00000004", "step-00000008"):
        (out / "checkpoints" / step).mkdir(parents=True)
        (out / "checkpoints" / step / loglik.trainer.STATE_FILE).write_bytes(b"")
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err == (f"loglik: interrupted; the newest checkpoint is {out}/checkpoints/"
                   "step-00000008 (after step 8); rerun with --resume to continue from it")
