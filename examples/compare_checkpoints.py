"""Train a tiny Llama-style model on local text and save three checkpoints to compare (offline).

    python examples/compare_checkpoints.py /tmp/loglik-ckpt
    loglik compare examples/compare_pairs.jsonl --model /tmp/loglik-ckpt/step-20 \\
        --model /tmp/loglik-ckpt/step-60 --model /tmp/loglik-ckpt/step-200 \\
        --plot docs/compare.png --plot-pair 2

A plain next-token loop (AdamW, cross-entropy on every position) over loglik.testing.CORPUS
and the prompt/response text of examples/compare_pairs.jsonl's training half; the checkpoints
share a tokenizer, so ``loglik compare`` also reports KL divergence and top-1 agreement. The
last checkpoint memorises the training half; the comparison shows it. About two minutes on
two idle CPU cores: 255 s of CPU time (user) measured with ``/usr/bin/time`` (issue 15 saw
132 s of wall time; on a machine shared with other jobs it takes longer).
"""

import json
import os
import sys
from pathlib import Path

import torch

from loglik.testing import CORPUS, sentencepiece_tokenizer, tiny_model

out = Path(sys.argv[1] if len(sys.argv) > 1 else "loglik-ckpt")
steps, save_at = 200, (20, 60, 200)
torch.manual_seed(0)
torch.set_num_threads(min(2, os.cpu_count() or 1))

pairs = Path(__file__).with_name("compare_pairs.jsonl")
records = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
# Train on the corpus and on the even records; the odd ones stay unseen.
text = CORPUS + "\n".join(r["prompt"] + r["response"] for r in records[::2]) + "\n"
tokenizer = sentencepiece_tokenizer(text.splitlines(True))
ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])     # (N,)
model = tiny_model("llama", len(tokenizer), hidden=64, layers=2, seed=0).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
seq, batch = 64, 16
for step in range(1, steps + 1):
    starts = torch.randint(0, len(ids) - seq - 1, (batch,))
    x = torch.stack([ids[s:s + seq] for s in starts])                            # (B, T)
    y = torch.stack([ids[s + 1:s + seq + 1] for s in starts])                    # (B, T)
    logits = model(input_ids=x).logits                                           # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                             y.reshape(-1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if step in save_at:
        path = out / f"step-{step}"
        model.eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
        model.train()
        print(f"step {step}: train loss {loss.item():.3f} -> {path}")
