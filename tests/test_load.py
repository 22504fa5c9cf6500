"""Loading: safetensors only unless pickle is allowed; no remote code; clear errors."""

import pytest

from loglik import ModelLoadError, Scorer


def test_pickle_weights_need_explicit_opt_in(tmp_path, tiny_gpt2, bpe_tokenizer):
    import torch

    path = tmp_path / "pickled"
    path.mkdir()
    tiny_gpt2.config.save_pretrained(path)            # config + pickle weights, no safetensors
    torch.save(tiny_gpt2.state_dict(), path / "pytorch_model.bin")
    bpe_tokenizer.save_pretrained(path)
    with pytest.raises(ModelLoadError, match="allow_pickle=True"):
        Scorer.from_pretrained(str(path))
    scorer = Scorer.from_pretrained(str(path), allow_pickle=True)
    assert scorer.score("Hello", " world").num_tokens > 0


def test_from_pretrained_folder_equals_from_hf(tiny_model_dir, llama_scorer):
    loaded = Scorer.from_pretrained(tiny_model_dir)
    a = loaded.score("The capital of France is", " Paris")
    b = llama_scorer.score("The capital of France is", " Paris")
    assert a.token_ids == b.token_ids
    assert a.logprob == pytest.approx(b.logprob, abs=1e-6)


def test_unknown_local_path_fails_fast(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        Scorer.from_pretrained(str(tmp_path / "missing"))


def test_remote_code_is_off_by_default(tmp_path, tiny_model_dir):
    import json
    import shutil

    path = tmp_path / "remote"
    shutil.copytree(tiny_model_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (path / "config.json").write_text(json.dumps(config))
    (path / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    # without trust_remote_code the custom class is never imported: the model loads as Llama
    scorer = Scorer.from_pretrained(str(path))
    assert type(scorer.backend.model).__name__ == "LlamaForCausalLM"
