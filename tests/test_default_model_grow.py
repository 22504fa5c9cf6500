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


def test_widen_keeps_every_logprob_and_new_dimensions_learn(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    grow = _scripts("default_model_grow")
    src, dst = Path(tiny_model_dir), tmp_path / "wide"
    old = json.loads((src / "config.json").read_text())
    hd = old.get("head_dim") or old["hidden_size"] // old["num_attention_heads"]
    hidden = old["hidden_size"] * 2
    out = grow.widen(src, dst, hidden)
    new = json.loads((dst / "config.json").read_text())
    assert new["hidden_size"] == hidden == out["new_hidden"]
    assert new["intermediate_size"] == 2 * old["intermediate_size"]
    assert new["num_attention_heads"] == hidden // hd
    assert new["num_key_value_heads"] == 2 * old["num_key_value_heads"]
    assert grow.max_logprob_change(src, dst, TEXTS) < 1e-4
    model = AutoModelForCausalLM.from_pretrained(str(dst))
    emb = model.model.embed_tokens.weight
    assert not emb[:, old["hidden_size"]:].any()          # the new residual dimensions start at 0
    ids = torch.tensor([[1, 5, 9, 13, 7, 3]])            # (1, T)
    model(input_ids=ids, labels=ids).loss.backward()
    assert emb.grad[:, old["hidden_size"]:].abs().sum() > 0
    down = model.model.layers[0].mlp.down_proj.weight     # the new MLP units' zero columns
    assert down.grad[:, old["intermediate_size"]:].abs().sum() > 0


def test_widen_refuses_a_width_off_the_head_size(tiny_model_dir, tmp_path):
    grow = _scripts("default_model_grow")
    old = json.loads((Path(tiny_model_dir) / "config.json").read_text())["hidden_size"]
    with pytest.raises(SystemExit, match="multiple of the head size"):
        grow.widen(Path(tiny_model_dir), tmp_path / "wide", old + 1)


def test_builtin_pairs_are_python_and_never_a_heldout_docstring():
    import ast
    import inspect

    builtin = _scripts("stdlib_builtin_pairs")
    corpus = _scripts("stdlib_corpus")
    assert "_json" not in builtin.c_modules() and "_heapq" not in builtin.c_modules()
    assert "math" in builtin.c_modules()
    heldout = inspect.cleandoc(corpus.inspect_clean(__import__("_heapq").heappush.__doc__))
    pairs = builtin.builtin_pairs([heldout])
    assert len(pairs) > 300 and {p.kind for p in pairs} == {"function", "method", "class"}
    docs = [inspect.cleandoc(p.response.strip().strip('"')) for p in pairs]
    assert heldout not in docs and len(set(docs)) == len(docs)
    for p in pairs:
        code = p.prompt + p.response
        if not p.response.endswith('"""'):          # a long docstring cut to a prefix
            continue
        tree = ast.parse(code + "\n" + " " * p.indent + "pass\n")
        node = tree.body[0]
        node = node.body[0] if p.kind == "method" else node
        assert ast.get_docstring(node) == inspect.cleandoc(
            p.response.strip()[3:-3]), p.id


def test_cleaned_docstring_reads_a_source_literal():
    builtin = _scripts("stdlib_builtin_pairs")
    literal = '    """Return x.\n\n    More.\n    """'
    assert builtin.cleaned_docstring(literal) == "Return x.\n\nMore."
    assert builtin.cleaned_docstring("    r'''Raw.'''") == "Raw."


def test_other_version_pairs_take_only_new_docstrings_and_skip_heldout_paths(tmp_path):
    other = _scripts("stdlib_other_versions")
    root = tmp_path / "python3.99"
    (root / "test").mkdir(parents=True)
    (root / "json").mkdir()
    (root / "site-packages").mkdir()
    known = '    """Return the sum of a and b."""'
    (root / "old.py").write_text(
        'def add(a, b):\n' + known + '\n    return a + b\n\n'
        'def sub(a, b):\n    """Return a minus b, a removed module\'s prose."""\n'
        '    return a - b\n\n'
        'def leaked(x):\n    """A held-out docstring, copied here."""\n    return x\n')
    (root / "test" / "test_old.py").write_text(
        'class TestOld:\n    def test_sub(self):\n        """Subtraction of two ints."""\n')
    (root / "test" / "test_json.py").write_text('def t():\n    """Tests json."""\n')
    (root / "json" / "__init__.py").write_text('def dumps(o):\n    """Held-out module."""\n')
    (root / "site-packages" / "pkg.py").write_text('def f():\n    """Third-party code."""\n')
    (root / "py2.py").write_text('print "hello"\ndef f():\n    """Python 2 only."""\n')
    heldout = ["A held-out docstring, copied here."]
    pairs, counts = other.other_version_pairs([root], [known], heldout)
    docs = sorted(p.response.strip() for p in pairs)
    assert docs == ['"""Return a minus b, a removed module\'s prose."""',
                    '"""Subtraction of two ints."""']
    assert counts == {str(root): 2}
    again, _ = other.other_version_pairs([root, root], [known], [])   # each docstring once
    assert len(again) == 3


def test_other_stdlibs_never_lists_the_running_python():
    import os

    other = _scripts("stdlib_other_versions")
    own = os.path.realpath(os.path.dirname(os.__file__))
    assert all(str(d) != own and (d / "os.py").exists() for d in other.other_stdlibs())


def test_validation_split_keeps_each_file_on_one_side():
    other = _scripts("stdlib_other_versions")
    corpus = _scripts("stdlib_corpus")

    def pair(version: str, path: str, name: str):
        return corpus.Pair(id=f"python{version}/{path}:{name}", module=path.split("/")[0],
                           prompt=f"def {name}():\n", response='    """Doc."""', kind="function",
                           indent=4)

    paths = [f"pkg{i}/mod{i}.py" for i in range(100)]
    pairs = [pair(v, p, f"f{k}") for p in paths for v in ("3.12", "3.13") for k in range(2)]
    train, valid = other.validation_split(pairs)
    assert sorted(p.id for p in train + valid) == sorted(p.id for p in pairs)
    side = {}
    for p in train + valid:                       # all four pairs of a file on one side
        side.setdefault(p.id.split("/", 1)[1].rsplit(":", 1)[0], set()).add(p in valid)
    assert all(len(s) == 1 for s in side.values()) and len(side) == 100
    assert 10 <= sum(True in s for s in side.values()) <= 30    # about one file in five
    assert other.validation_split(pairs, every=1) == ([], pairs)


def test_widen_pick_measures_each_candidate_once_and_copies_the_best(tiny_model_dir, tmp_path):
    import argparse
    import shutil

    from safetensors.torch import load_file, save_file

    retrain = _scripts("default_model_retrain")
    work = tmp_path
    for k in retrain.WIDEN_SEEDS:
        shutil.copytree(tiny_model_dir, work / f"run10_s{k}" / "checkpoints" / "step-00000100")
        weights = work / f"run10_s{k}" / "checkpoints" / "step-00000100" / "model.safetensors"
        state = load_file(str(weights))                   # an earlier checkpoint: other weights
        save_file({n: w * 0.5 for n, w in state.items()}, str(weights), metadata={"format": "pt"})
        shutil.copytree(tiny_model_dir, work / f"run10_s{k}" / "checkpoints" / "step-00000200")
        shutil.copytree(tiny_model_dir, work / f"run10_s{k}", dirs_exist_ok=True)
    shutil.copytree(tiny_model_dir, work / "run10")
    (work / "run10" / "marker.txt").write_text("the average")
    rows = [{"prompt": f"def f{i}(x):\n", "response": f'    """Return {i} times x."""',
             "indent": 4} for i in range(6)]
    (work / "valid_pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # A record from an earlier, interrupted pass: not measured again, and here the best.
    (work / "widen_pick.json").write_text(json.dumps(
        {"measured": {"run10": {"rate": 1.0, "own_nll_token_mean": 9.0}}}))
    retrain.stage_widen_pick(work, argparse.Namespace(threads=1))
    record = json.loads((work / "widen_pick.json").read_text())
    # step 200 is each run's end (the same weights): measured once, as the run
    names = {f"run10_s{k}{s}" for k in retrain.WIDEN_SEEDS for s in ("", "/step-00000100")}
    assert set(record["measured"]) == names | {"run10"}
    assert record["measured"]["run10"] == {"rate": 1.0, "own_nll_token_mean": 9.0}
    assert all(0 <= record["measured"][n]["rate"] <= 1 for n in names)
    assert record["best"] == "run10" and record["validation_pairs"] == 6
    assert (work / "run10_pick" / "marker.txt").read_text() == "the average"
    assert not (work / "run10_pick" / "checkpoints").exists()


@pytest.mark.parametrize(("stdlib", "thirdparty", "shipped"), [
    (0.9213, 0.85, "run10_pick"), (0.9190, 0.90, "run_best"), (0.95, 0.8475, "run_best")])
def test_phase_10_ships_only_a_pick_that_met_both_targets(tmp_path, stdlib, thirdparty, shipped):
    build = _scripts("build_default_model")
    for run in ("run_best", "run10_pick"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "model.safetensors").write_bytes(b"")
    assert build.final_dir(tmp_path) == tmp_path / "run_best"      # nothing measured yet
    (tmp_path / "widen_measured.json").write_text(json.dumps(
        {"run10_pick": {"stdlib": stdlib, "thirdparty": thirdparty}, "picked": "run10"}))
    assert build.final_dir(tmp_path) == tmp_path / shipped
