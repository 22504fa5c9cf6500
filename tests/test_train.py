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
        if torch.is_grad_enabled():          # a training step, not the packing check
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


# -- several processes (torchrun, gloo on CPU) ----------------------------------------------
def _torchrun(args: list[str], **popen) -> "subprocess.Popen":
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node", "2", "-m", "loglik", "train", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def _torchrun_killed_after_checkpoint(args: list[str], run: Path, *, step: int) -> None:
    """Start a two-process run and SIGKILL its process group once checkpoint ``step`` is
    written (a crash mid-run: no final model)."""
    import os
    import signal
    import time

    proc = _torchrun(args, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / f"step-{step:08d}").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists()          # it really died mid-run


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_after_a_kill(tmp_path, tiny_model_dir):
    """torchrun --nproc-per-node 2 (gloo): each optimiser step is 2 micro-batches, one per
    process, divided by the step's response tokens over both; the weights equal one process
    with --grad-accum 2 over the same data. Killed mid-run (SIGKILL to the whole launcher)
    and resumed with the same line, it ends with the uninterrupted run's weights."""
    data = _pairs(tmp_path / "train.jsonl", CAPITALS)     # 10 examples, 5 micro-batches
    held = _pairs(tmp_path / "eval.jsonl", CAPITALS[:2])
    common = ["--batch-size", "2", "--epochs", "2", "--lr", "3e-3", "--seed", "1",
              "--threads", "1", "--no-progress", "--no-eval-train"]
    one = loglik.train(data, model=tiny_model_dir, output_dir=str(tmp_path / "one"),
                       batch_size=2, grad_accum=2, epochs=2, lr=3e-3, seed=1, threads=1,
                       eval_train=False, quiet=True)
    two = _torchrun([data, "--model", tiny_model_dir, "-o", str(tmp_path / "two"), *common])
    output = two.communicate(timeout=300)[0]
    assert two.returncode == 0, output
    assert "optimiser steps" in output and "x2 process(es)" in output
    plan = _log(tmp_path / "two")[0]
    assert plan["kind"] == "plan" and plan["processes"] == 2 and plan["steps"] == one.steps == 6
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(w1["lm_head.weight"], _weights(Path(tiny_model_dir))["lm_head.weight"])

    # killed after its third checkpoint, then resumed with the same command
    run = tmp_path / "killed"
    args = [data, "--model", tiny_model_dir, "-o", str(run), "--save-every", "1",
            "--eval", held, "--eval-every", "1", *common]
    _torchrun_killed_after_checkpoint(args, run, step=3)
    resumed = _torchrun([*args, "--resume"])
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    w3 = _weights(run)
    for name in w2:
        torch.testing.assert_close(w3[name], w2[name], rtol=0, atol=1e-7, msg=name)
    epochs = [r["step"] for r in _epochs(run)]
    assert epochs == [0, 3, 6]

    with pytest.raises(TrainingError, match="2 process"):     # resume needs the same world size
        loglik.train(data, model=tiny_model_dir, output_dir=str(run), resume=True,
                     batch_size=2, epochs=2, lr=3e-3, seed=1, threads=1, eval_train=False,
                     eval_data=held, eval_every=1, save_every=1, quiet=True)


# -- defaults that learn -------------------------------------------------------------------
FACTS = [("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
         ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]
PHRASINGS = ["The capital of {c} is", "{c}'s capital is", "Capital of {c}:",
             "Q: capital of {c}? A:", "The capital city of {c} is", "In {c}, the capital is"]
ENDINGS = ["", " called", " named", " the city of"]
HELD_OUT = ["What is the capital of {c}? It is", "{c} has its capital in"]


def _facts(tmp_path: Path) -> tuple[str, str]:
    """8 facts x 24 phrasings to train on (192 pairs); 2 unseen phrasings held out."""
    train, held = tmp_path / "facts.jsonl", tmp_path / "facts_heldout.jsonl"
    train.write_text("".join(json.dumps({"prompt": p.format(c=c) + e, "response": f" {a}."})
                             + "\n" for c, a in FACTS for p in PHRASINGS for e in ENDINGS))
    held.write_text("".join(json.dumps({"prompt": p.format(c=c), "response": f" {a}."}) + "\n"
                            for c, a in FACTS for p in HELD_OUT))
    return str(train), str(held)


def test_default_flags_learn_small_data(tmp_path, tiny_model_dir, capsys):
    """192 short pairs, 3 epochs at --lr 1e-3 and default batching: 8 examples per
    micro-batch, 72 steps, and the held-out total rises from -552.6 to about -141. The old
    default (the whole file in one 8192-token batch: 3 steps) moved it only to about -465,
    and is warned about."""
    train, held = _facts(tmp_path)
    base = ["train", train, "--model", tiny_model_dir, "--eval", held, "--epochs", "3",
            "--lr", "1e-3", "--threads", "1", "--no-progress", "--no-eval-train"]
    assert main([*base, "-o", str(tmp_path / "default")]) == 0
    err = capsys.readouterr().err
    assert "192 examples: 72 optimiser steps (24 per epoch x 3)" in err
    assert "at most 8 examples and 8192 tokens, packed rows" in err
    assert "warning" not in err
    held_default = [r["eval"]["logprob"] for r in _epochs(tmp_path / "default")]
    assert held_default[0] == pytest.approx(-552.59, abs=0.01)
    assert held_default[-1] > -200

    assert main([*base, "-o", str(tmp_path / "one-batch"), "--batch-size", "1000"]) == 0
    err = capsys.readouterr().err
    assert "3 optimiser steps (1 per epoch x 3)" in err
    assert "warning: only 3 optimiser steps in all" in err and "--batch-size" in err
    held_big = [r["eval"]["logprob"] for r in _epochs(tmp_path / "one-batch")]
    assert held_big[-1] < -400
    assert held_default[-1] - held_default[0] > 3 * (held_big[-1] - held_big[0])


def test_packing_falls_back_to_padding_for_a_model_without_custom_masks(tmp_path, sp_tokenizer):
    from transformers.models.llama.modeling_llama import LlamaModel

    from loglik.testing import tiny_model

    class CausalOnly(LlamaModel):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = None
                kwargs.pop("position_ids", None)
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    data = _pairs(tmp_path / "train.jsonl", CAPITALS[:6])
    runs = {}
    for name in ("plain", "plain-no-pack", "causal-only"):
        model = tiny_model("llama", len(sp_tokenizer), scale=5.0)
        if name == "causal-only":
            body = CausalOnly(model.config)
            body.load_state_dict(model.model.state_dict())
            model.model = body
        runs[name] = loglik.train(data, model=model, tokenizer=sp_tokenizer,
                                  output_dir=str(tmp_path / name), batch_size=3, lr=3e-3,
                                  pack=name != "plain-no-pack", threads=1, quiet=True)
    assert runs["plain"].packed and not runs["causal-only"].packed
    assert _log(tmp_path / "causal-only")[0]["packed"] is False
    # the same weights, so the same training as --no-pack (the scorer, too, falls back)
    assert runs["causal-only"].epochs[-1]["train"]["logprob"] == pytest.approx(
        runs["plain-no-pack"].epochs[-1]["train"]["logprob"], abs=1e-4)


# -- LoRA ----------------------------------------------------------------------------------
def test_lora_trains_saves_the_adapter_and_scores_with_it(tmp_path, tiny_model_dir):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    data = _pairs(tmp_path / "train.jsonl", CAPITALS[:8])
    held = _pairs(tmp_path / "eval.jsonl", CAPITALS[8:])
    base = ["train", data, "--model", tiny_model_dir, "--eval", held, "--lora", "4",
            "--lr", "1e-2", "--epochs", "2", "--batch-size", "2", "--threads", "1",
            "--no-progress"]
    assert main([*base, "-o", str(tmp_path / "adapter")]) == 0
    out = tmp_path / "adapter"
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    names = load_file(str(out / "adapter_model.safetensors")).keys()
    assert names and all("lora_" in n for n in names)
    epochs = _epochs(out)
    assert epochs[-1]["eval"]["logprob"] > epochs[0]["eval"]["logprob"] + 1

    scores = tmp_path / "scores.jsonl"
    assert main(["score", held, "--model", tiny_model_dir, "--adapter", str(out),
                 "-o", str(scores)]) == 0
    total = math.fsum(json.loads(x)["logprob"] for x in scores.read_text().splitlines())
    assert total == pytest.approx(epochs[-1]["eval"]["logprob"], abs=1e-3)
    via_python = loglik.Scorer.from_pretrained(tiny_model_dir, adapter=str(out))
    assert math.fsum(s.logprob for s in via_python.score_many(
        [(f"The capital of {c} is ", f"{p}.") for c, p in CAPITALS[8:]])) == pytest.approx(
        total, abs=1e-4)
    plain = loglik.Scorer.from_pretrained(tiny_model_dir).score_many(
        [(f"The capital of {c} is ", f"{p}.") for c, p in CAPITALS[8:]])
    assert math.fsum(s.logprob for s in plain) == pytest.approx(epochs[0]["eval"]["logprob"],
                                                                abs=1e-4)

    assert main([*base, "-o", str(tmp_path / "merged"), "--merge"]) == 0
    merged = tmp_path / "merged"
    assert (merged / "model.safetensors").exists() and (merged / "adapter").is_dir()
    assert main(["score", held, "--model", str(merged), "-o", str(tmp_path / "m.jsonl")]) == 0
    total_merged = math.fsum(json.loads(x)["logprob"]
                             for x in (tmp_path / "m.jsonl").read_text().splitlines())
    assert total_merged == pytest.approx(total, abs=1e-3)
    with pytest.raises(ConfigError, match="go with --lora"):
        loglik.train(data, model=tiny_model_dir, output_dir=str(tmp_path / "x"), merge=True)


def test_lora_resume_equals_uninterrupted_run(tmp_path, tiny_model_dir):
    """A LoRA checkpoint is the adapter plus the trainer state; resuming loads the base model
    again and the adapter from the checkpoint, and ends with the same adapter bytes."""
    pytest.importorskip("peft")
    data = _pairs(tmp_path / "train.jsonl", CAPITALS)
    out = tmp_path / "run"
    kw = dict(model=tiny_model_dir, output_dir=str(out), epochs=2, lr=1e-2, lora=4,
              batch_size=3, save_every=1, threads=1, eval_train=False, quiet=True)
    first = loglik.train(data, **kw)
    adapter = (out / "adapter_model.safetensors").read_bytes()
    ckpts = sorted((out / "checkpoints").iterdir())
    assert (ckpts[-1] / "adapter_config.json").exists()
    assert not (ckpts[-1] / "model.safetensors").exists()
    shutil.rmtree(ckpts[-1])
    (out / "adapter_model.safetensors").unlink()
    resumed = loglik.train(data, resume=True, **kw)
    assert resumed.steps == first.steps == 8
    assert (out / "adapter_model.safetensors").read_bytes() == adapter
