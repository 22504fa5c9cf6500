"""The default model's retrain: growing a Llama deeper is an exact identity before training
(scripts/default_model_grow.py), and the extra stdlib pairs never read a held-out module."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def _scripts(name: str):
    sys.path.insert(0, str(SCRIPTS))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(SCRIPTS))


TEXTS = ["def add(a, b):\n    return a + b\n", "The cat sat on the mat.", "x = [1, 2, 3]"]


def test_grow_keeps_every_logprob_and_doubles_the_layers(tiny_model_dir, tmp_path):
    grow = _scripts("default_model_grow")
    src, dst = Path(tiny_model_dir), tmp_path / "grown"
    old = json.loads((src / "config.json").read_text())["num_hidden_layers"]
    out = grow.grow(src, dst, 2 * old)
    assert out["old_layers"] == old and out["new_layers"] == 2 * old
    assert json.loads((dst / "config.json").read_text())["num_hidden_layers"] == 2 * old
    assert grow.max_logprob_change(src, dst, TEXTS) < 1e-4


def test_grown_layers_start_at_zero_output_and_get_gradients(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    grow = _scripts("default_model_grow")
    grow.grow(Path(tiny_model_dir), tmp_path / "grown", 4)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "grown"))
    new = model.model.layers[1]                          # 0 0' 1 1': index 1 is a new one
    assert not new.self_attn.o_proj.weight.any() and not new.mlp.down_proj.weight.any()
    ids = torch.tensor([[1, 5, 9, 13, 7, 3]])           # (1, T)
    model(input_ids=ids, labels=ids).loss.backward()
    assert new.self_attn.o_proj.weight.grad.abs().sum() > 0
    assert new.mlp.down_proj.weight.grad.abs().sum() > 0


def test_grow_refuses_a_layer_count_that_is_not_a_multiple(tiny_model_dir, tmp_path):
    grow = _scripts("default_model_grow")
    old = json.loads((Path(tiny_model_dir) / "config.json").read_text())["num_hidden_layers"]
    with pytest.raises(SystemExit, match="not a multiple"):
        grow.grow(Path(tiny_model_dir), tmp_path / "grown", 2 * old + 1)


def test_extra_pair_files_skip_the_heldout_modules():
    corpus = _scripts("stdlib_corpus")
    files = list(corpus.iter_extra_files())
    if not files:
        pytest.skip("this Python has no test package / idlelib / lib2to3 installed")
    assert {f.module for f in files} <= set(corpus.EXTRA_PAIR_MODULES)
    assert not [f.relpath for f in files
                if any(h in f.relpath for h in corpus.HELDOUT_MODULES)]
    assert all(f.relpath.split("/")[0] in corpus.EXCLUDED_MODULES for f in files)
