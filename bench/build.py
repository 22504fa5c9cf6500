"""Build the benchmark's inputs offline: a word-level tokenizer, random-weight models, workloads.

Every word ``w<N>`` of the text is exactly one token (a WordLevel tokenizer over whitespace),
so every tool reads exactly the same token ids from the same text, with no BOS added.
Models are Llama-style with random weights: hidden 512, 8 layers, 8 heads, MLP 1376, vocab
32,000 (about 58M parameters) and the same body with a 128,000-row head (for memory).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

VOCAB = 32_000
SPECIAL = ["<unk>", "</s>"]
MODELS = {"llama-58m-v32k": VOCAB, "llama-58m-v128k": 128_000}

# name -> (full size, quick size, generator); sizes count contexts (pairs: examples).
WORKLOADS = {
    "pairs": "512 pairs, prompts 50-400 tokens, responses 5-100",
    "choices": "128 contexts of ~300 tokens x 4 choices of 5-20 tokens",
    "best_of_16": "64 prompts of ~300 tokens x 16 responses of ~50 tokens",
    "long": "2,000-token prompts with 20-token responses",
}
FULL = {"pairs": 512, "choices": 128, "best_of_16": 64, "long": 32}
QUICK = {"pairs": 32, "choices": 8, "best_of_16": 2, "long": 2}


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL), VOCAB)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")   # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>",
                                   model_max_length=4096)
    fast.save_pretrained(path)


def build_model(path: Path, vocab: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from loglik.testing import tiny_config

    config = tiny_config("llama", vocab, hidden=512, layers=8, heads=8, max_positions=4096,
                         num_key_value_heads=8, intermediate_size=1376)
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(path)


def ensure_models(cache: Path) -> dict[str, Path]:
    """Build (once) and return the model folders; each holds the tokenizer too."""
    out = {}
    for name, vocab in MODELS.items():
        path = cache / "models" / name
        if not (path / "config.json").exists():
            path.mkdir(parents=True, exist_ok=True)
            build_model(path, vocab)
            build_tokenizer(path)
        out[name] = path
    return out


def ensure_gguf(model_dir: Path, dtypes: tuple[str, ...] = ("f32", "q8_0")) -> dict[str, Path]:
    """The model written as GGUF files next to it (``model-f32.gguf``...), once.

    The word-level tokenizer has no llama.cpp equivalent: the GGUF rows score the same token
    ids through the HF tokenizer (see loglik.testing_gguf)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loglik.testing_gguf import write_gguf

    out = {d: model_dir / f"model-{d}.gguf" for d in dtypes}
    missing = [d for d, p in out.items() if not p.exists()]
    if missing:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
        tok = AutoTokenizer.from_pretrained(model_dir)
        for d in missing:
            tmp = out[d].with_suffix(".tmp")
            write_gguf(model, tok, tmp, dtype=d)
            os.replace(tmp, out[d])
    return out


def _words(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(len(SPECIAL), VOCAB) for _ in range(n)]


def make_workload(name: str, size: int, seed: int = 0) -> list[dict]:
    """Records {prompt, response, context_ids, response_ids}; prompts have no trailing space,
    responses start with one (so the response's tokens are the same alone and joined)."""
    rng = random.Random(f"{name}-{seed}")
    groups: list[tuple[list[int], list[list[int]]]] = []
    for _ in range(size):
        if name == "pairs":
            groups.append((_words(rng, rng.randint(50, 400)), [_words(rng, rng.randint(5, 100))]))
        elif name == "choices":
            groups.append((_words(rng, rng.randint(250, 350)),
                           [_words(rng, rng.randint(5, 20)) for _ in range(4)]))
        elif name == "best_of_16":
            groups.append((_words(rng, rng.randint(250, 350)),
                           [_words(rng, rng.randint(40, 60)) for _ in range(16)]))
        elif name == "long":
            groups.append((_words(rng, 2000), [_words(rng, 20)]))
        else:
            raise ValueError(f"unknown workload {name!r}; use one of {', '.join(WORKLOADS)}")
    text = lambda ids: " ".join(f"w{i}" for i in ids)  # noqa: E731
    return [{"prompt": text(ctx), "response": " " + text(r), "context_ids": ctx,
             "response_ids": r} for ctx, responses in groups for r in responses]


def ensure_workloads(cache: Path, quick: bool) -> dict[str, Path]:
    sizes = QUICK if quick else FULL
    out = {}
    for name, size in sizes.items():
        path = cache / "workloads" / f"{name}-{size}.json"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(make_workload(name, size)))
            os.replace(tmp, path)
        out[name] = path
    return out
