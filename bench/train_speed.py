"""Training throughput: tokens/s of one optimiser step with loglik's objective vs HF's loss.

    python bench/train_speed.py [--threads 1] [--rows 8] [--length 384] [--prompt 0] [--steps 3]

Two models with random weights (no download): the 2-layer test model of loglik.testing
(hidden 32, vocab 700) and a Llama of the embedded default model's shape (hidden 128,
4 layers, vocab 8192, tied head). A step is forward + backward + AdamW on `rows` rows of
`length` tokens, the first `--prompt` (at least 1) of them context and the rest response
tokens (0: pre-training, every token after the first is trained on); "loglik" uses
conditional_nll (head only at predicting positions, fused chunked cross-entropy), "hf" the
model's own loss over full logits. Prints one line per model and method.

Then packed vs padded micro-batches as ``loglik train`` plans them (--examples pairs whose
lengths are spread uniformly over [--min-length, --length], a quarter of each the prompt; one
epoch of optimiser steps with the trainer's default batching: at most 8 examples and
--batch-tokens tokens per micro-batch): "padded" gives each example a row, padded to the
longest of its length-sorted micro-batch; "packed" puts the epoch's shuffled examples side by
side in rows (block-diagonal mask, restarted positions). tokens/s counts real tokens only.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--length", type=int, default=384)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--prompt", type=int, default=0, help="context tokens per row")
    p.add_argument("--examples", type=int, default=64, help="pairs for the packing comparison")
    p.add_argument("--min-length", type=int, default=16)
    p.add_argument("--batch-tokens", type=int, default=8192)
    p.add_argument("--only", choices=("objective", "packing"), default=None)
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from loglik.objective import collate
    from loglik.testing import tiny_config
    from loglik.types import Encoded

    torch.set_num_threads(args.threads)
    models = {
        "test-tiny (hidden 32, 2 layers, vocab 700)": tiny_config("llama", 700),
        "default-shape (hidden 128, 4 layers, vocab 8192)": LlamaConfig(
            vocab_size=8192, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=4, intermediate_size=384, max_position_embeddings=1024,
            tie_word_embeddings=True),
    }
    for name, config in models.items():
        config.max_position_embeddings = max(config.max_position_embeddings, args.length)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config).train()
        g = torch.Generator().manual_seed(0)
        ctx = max(args.prompt, 1)
        rows = []
        for _ in range(args.rows):
            ids = torch.randint(3, config.vocab_size, (args.length,), generator=g).tolist()
            rows.append(Encoded(tuple(ids[:ctx]), tuple(ids[ctx:]), "", "joint"))
        batch = collate(rows)
        tokens = int(batch["attention_mask"].sum())
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        if args.only != "packing":
            compare_objectives(name, model, batch, tokens, ctx, optimizer, args)
        if args.only != "objective":
            compare_packing(name, model, config.vocab_size, args)


def compare_objectives(name, model, batch, tokens, ctx, optimizer, args) -> None:
    import time

    from loglik.objective import conditional_nll

    def step(method: str) -> None:
        if method == "loglik":
            loss = conditional_nll(model, batch, reduction="token_mean")
        else:
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for method in ("loglik", "hf"):
        step(method)                                   # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(method)
        dt = (time.perf_counter() - t0) / args.steps
        print(f"{name:50s} {method:7s} {tokens / dt:8.0f} tokens/s  {dt:6.3f} s/step "
              f"({tokens} tokens, {ctx} of context per row, {args.threads} thread(s))",
              flush=True)


def compare_packing(name, model, vocab_size, args) -> None:
    import random

    import torch

    from loglik.objective import collate, response_nll
    from loglik.train_data import auto_batch_size, plan_epoch, row_length
    from loglik.train_packing import collate_packed, packing_trains
    from loglik.types import Encoded

    rng = random.Random(0)
    encoded = []
    for _ in range(args.examples):
        n = rng.randint(args.min_length, args.length)
        ids = [rng.randrange(3, vocab_size) for _ in range(n)]
        ctx = max(1, n // 4)
        encoded.append(Encoded(tuple(ids[:ctx]), tuple(ids[ctx:]), "", "joint"))
    assert packing_trains(model)
    real = sum(row_length(e) for e in encoded)
    size = auto_batch_size(len(encoded))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for packed in (False, True):
        batches = plan_epoch(encoded, args.batch_tokens, seed=0, epoch=0, batch_size=size,
                             pack=packed)
        made = [(collate_packed if packed else collate)([encoded[i] for i in b])
                for b in batches]
        forwarded = sum(b["input_ids"].numel() for b in made)
        response_nll(model, made[0], reduction="token_mean")[0].backward()   # warm-up
        optimizer.zero_grad()
        t0 = time.perf_counter()
        for b in made:
            loss, _ = response_nll(model, b, reduction="token_mean")
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        dt = time.perf_counter() - t0
        print(f"{name:50s} {'packed' if packed else 'padded':7s} {real / dt:8.0f} tokens/s  "
              f"{dt:6.2f} s/epoch ({len(made)} steps, {real} real tokens, {forwarded} "
              f"forwarded, {args.examples} pairs of {args.min_length}-{args.length} tokens, "
              f"{args.threads} thread(s))", flush=True)


if __name__ == "__main__":
    main()
