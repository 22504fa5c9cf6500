"""Training throughput: tokens/s of one optimiser step with loglik's objective vs HF's loss.

    python bench/train_speed.py [--threads 1] [--rows 8] [--length 384] [--prompt 0] [--steps 3]

Two models with random weights (no download): the 2-layer test model of loglik.testing
(hidden 32, vocab 700) and a Llama of the embedded default model's shape (hidden 128,
4 layers, vocab 8192, tied head). A step is forward + backward + AdamW on `rows` rows of
`length` tokens, the first `--prompt` (at least 1) of them context and the rest response
tokens (0: pre-training, every token after the first is trained on); "loglik" uses
conditional_nll (head only at predicting positions, fused chunked cross-entropy), "hf" the
model's own loss over full logits. Prints one line per model and method.
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
    args = p.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from loglik.objective import collate, conditional_nll
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


if __name__ == "__main__":
    main()
