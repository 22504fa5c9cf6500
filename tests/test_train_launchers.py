"""'loglik train' on two processes beyond plain torchrun DDP: FSDP2 (--fsdp) and
'accelerate launch' (gloo on CPU). The weights after N steps equal one process over the
same data; an FSDP run killed mid-way resumes from its full-state-dict checkpoint to the
uninterrupted run's weights."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import loglik
from loglik.errors import ConfigError, TrainingError
from tests.test_train import (CAPITALS, _epochs, _log, _pairs, _torchrun,
                              _torchrun_killed_after_checkpoint, _weights)

COMMON = ["--batch-size", "2", "--epochs", "2", "--lr", "3e-3", "--seed", "1",
          "--threads", "1", "--no-progress", "--no-eval-train"]


@pytest.fixture(autouse=True)
def one_thread(torch_threads):
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _one_process(data: str, model: str, out: Path) -> "loglik.TrainResult":
    """The reference: one process, 2 micro-batches per step (as 2 processes x 1)."""
    return loglik.train(data, model=model, output_dir=str(out), batch_size=2, grad_accum=2,
                        epochs=2, lr=3e-3, seed=1, threads=1, eval_train=False, quiet=True)


def _tied(model_dir: str, to: Path) -> str:
    """The tiny Llama's config with the output head tied to the embeddings, freshly
    initialised (no dropout: each process would draw its own)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(model_dir)
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    model.save_pretrained(to)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(to)
    return str(to)


def _same_weights(got: Path, want: Path, atol: float = 1e-6) -> None:
    w1, w2 = _weights(want), _weights(got)
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-5, atol=atol, msg=name)


@pytest.mark.slow
def test_fsdp_two_processes_train_as_one_and_resume_after_a_kill(tmp_path, tiny_model_dir):
    """torchrun --nproc-per-node 2 ... --fsdp (FSDP2 on gloo): 11 examples in micro-batches
    of 2 make 6 micro-batches a epoch, so the last step gives rank 1 none (it runs a zero-
    weighted one: the collectives pair up). The model's head is tied to its embeddings.
    Killed after its third checkpoint and resumed, it ends where the uninterrupted run does."""
    data = _pairs(tmp_path / "train.jsonl", CAPITALS + [("Cuba", "Havana")])
    held = _pairs(tmp_path / "eval.jsonl", CAPITALS[:2])
    model = _tied(tiny_model_dir, tmp_path / "tied")
    one = _one_process(data, model, tmp_path / "one")
    two = _torchrun([data, "--model", model, "-o", str(tmp_path / "two"), "--fsdp",
                     *COMMON])
    output = two.communicate(timeout=300)[0]
    assert two.returncode == 0, output
    plan = _log(tmp_path / "two")[0]
    assert plan["processes"] == 2 and plan["steps"] == one.steps == 6
    _same_weights(tmp_path / "two", tmp_path / "one")
    start = _weights(Path(model))
    assert not torch.equal(_weights(tmp_path / "two")["model.embed_tokens.weight"],
                           start["model.embed_tokens.weight"])
    ckpt = sorted((tmp_path / "two" / "checkpoints").glob("step-*"))[-1]
    state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
    assert state["fsdp"] is True and state["world_size"] == 2
    assert any("model.layers.0." in k for k in state["optimizer"]["state"])   # full, by name
    _same_weights(ckpt, tmp_path / "two", atol=0)     # the last checkpoint: the full weights

    run = tmp_path / "killed"
    args = [data, "--model", model, "-o", str(run), "--save-every", "1", "--fsdp",
            "--eval", held, "--eval-every", "1", *COMMON]
    _torchrun_killed_after_checkpoint(args, run, step=3)
    refused = _torchrun([a if a != "--fsdp" else "--no-fsdp" for a in args] + ["--resume"])
    output = refused.communicate(timeout=300)[0]
    assert refused.returncode != 0 and "resume with --fsdp" in output, output
    resumed = _torchrun([*args, "--resume"])
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    _same_weights(run, tmp_path / "two", atol=1e-7)
    epochs = _epochs(run)
    assert [r["step"] for r in epochs] == [0, 3, 6]
    assert all(r["eval"]["num_examples"] == 2 for r in epochs)
    scores = loglik.Scorer.from_pretrained(str(run)).score_many(        # the sharded eval
        json.loads(line) for line in Path(held).read_text().splitlines())
    assert sum(s.logprob for s in scores) == pytest.approx(epochs[-1]["eval"]["logprob"],
                                                           abs=1e-4)


def test_fsdp_is_refused_with_lora():
    with pytest.raises(ConfigError, match="leave --fsdp out"):
        loglik.trainer.TrainOptions(fsdp=True, lora=4)


def test_fsdp_micro_batches_pair_up_across_processes():
    from loglik.train_fsdp import micro_batches

    steps = [[0, 1], [2, 3], [4]]
    got = [micro_batches(steps, r, 2) for r in (0, 1)]
    assert got == [[([0, 1], True), ([4], True)], [([2, 3], True), ([0, 1], False)]]
    assert [len(micro_batches(steps, r, 4)) for r in range(4)] == [1, 1, 1, 1]


def test_fsdp_choice(tiny_llama):
    from loglik.train_fsdp import use_fsdp

    assert use_fsdp(None, tiny_llama, "cpu", 2) is False        # automatic: CPU replicates
    assert use_fsdp(True, tiny_llama, "cpu", 2) is True
    assert use_fsdp(True, tiny_llama, "cpu", 1) is False        # one process: nothing to shard
    assert use_fsdp(False, tiny_llama, "cuda", 8) is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate not installed")
def test_accelerate_launch_trains_as_one_process(tmp_path, tiny_model_dir):
    """accelerate launch --multi_gpu --num_processes 2 on a CPU machine (gloo): the same
    weights as one process with --grad-accum 2 (accelerate's torchrun sets the environment;
    loglik joins its group). With --cpu, accelerate 1.x starts ONE process (its multi-CPU
    path is mpirun with --mpirun_hostfile): this is checked too, so the README stays right."""
    import socket

    data = _pairs(tmp_path / "train.jsonl", CAPITALS)
    _one_process(data, tiny_model_dir, tmp_path / "one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_CONFIG_FILE": "/nonexistent"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no"]
    proc = subprocess.run(
        [*launch, "--multi_gpu", "--num_processes", "2", "--main_process_port", str(port),
         "-m", "loglik", "train", data, "--model", tiny_model_dir, "-o", str(tmp_path / "acc"),
         *COMMON], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "x2 process(es)" in proc.stderr
    assert _log(tmp_path / "acc")[0]["processes"] == 2
    _same_weights(tmp_path / "acc", tmp_path / "one")

    probe = tmp_path / "world.py"
    probe.write_text("import os; print('WORLD', os.environ.get('WORLD_SIZE', '1'))\n")
    cpu = subprocess.run([*launch, "--cpu", "--num_processes", "2", str(probe)], env=env,
                         capture_output=True, text=True, timeout=120)
    assert cpu.returncode == 0 and cpu.stdout.split() == ["WORLD", "1"], cpu.stdout + cpu.stderr


def test_resume_refuses_a_changed_sharding(tmp_path):
    from loglik.train_checkpoint import check_sharding

    check_sharding({"fsdp": True}, True, tmp_path)
    check_sharding({}, False, tmp_path)          # written before FSDP existed
    with pytest.raises(TrainingError, match="without FSDP and this run is with"):
        check_sharding({}, True, tmp_path)
