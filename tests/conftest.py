"""Shared fixtures: tiny tokenizers trained on local text and tiny random models (per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return torch


@pytest.fixture
def one_thread(torch_threads):
    """One torch thread for the test, restored after: tiny models run fastest on one thread
    (and do not fight other processes for cores)."""
    before = torch_threads.get_num_threads()
    torch_threads.set_num_threads(1)
    yield
    torch_threads.set_num_threads(before)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """GPT-2 style byte-level BPE, BOS = EOS never added."""
    from loglik.testing import byte_bpe_tokenizer

    return byte_bpe_tokenizer()


@pytest.fixture(scope="session")
def sp_tokenizer():
    """Llama style: ▁ marker, byte fallback, adds <s>."""
    from loglik.testing import sentencepiece_tokenizer

    return sentencepiece_tokenizer()


@pytest.fixture(scope="session")
def nobos_tokenizer():
    """Byte-level BPE with EOS and no BOS token."""
    from loglik.testing import no_bos_tokenizer

    return no_bos_tokenizer()


@pytest.fixture(scope="session")
def tokenizers(bpe_tokenizer, sp_tokenizer, nobos_tokenizer):
    return {"byte_bpe": bpe_tokenizer, "sentencepiece": sp_tokenizer, "no_bos": nobos_tokenizer}


@pytest.fixture(scope="session")
def tiny_llama(sp_tokenizer, torch_threads):
    from loglik.testing import tiny_model

    return tiny_model("llama", len(sp_tokenizer), scale=10.0)


@pytest.fixture(scope="session")
def tiny_gpt2(bpe_tokenizer, torch_threads):
    from loglik.testing import tiny_model

    return tiny_model("gpt2", len(bpe_tokenizer), scale=10.0)


@pytest.fixture(scope="session")
def llama_scorer(tiny_llama, sp_tokenizer):
    from loglik import Scorer

    return Scorer.from_hf(tiny_llama, sp_tokenizer)


@pytest.fixture(scope="session")
def gpt2_scorer(tiny_gpt2, bpe_tokenizer):
    from loglik import Scorer

    return Scorer.from_hf(tiny_gpt2, bpe_tokenizer)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_llama, sp_tokenizer):
    """A save_pretrained folder (safetensors + tokenizer) of the tiny Llama."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama.save_pretrained(path)
    sp_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, tiny_gpt2, bpe_tokenizer):
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tiny_gpt2.save_pretrained(path)
    bpe_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tokenizer_styles(tokenizers):
    """Every tokenizer style of loglik.testing.TOKENIZER_STYLES, by name (shared instances)."""
    from loglik.testing import TOKENIZER_STYLES

    return {name: tokenizers[name] if name in tokenizers else build()
            for name, build in TOKENIZER_STYLES.items()}
