"""Build a tiny random Llama-style model and tokenizer in a folder (offline).

    python examples/build_tiny_model.py /tmp/loglik-tiny

The starting point of the README's training example (``loglik train ... --model
/tmp/loglik-tiny``): an untrained model, so that training visibly changes its numbers. For
scoring, loglik's embedded default model needs no setup (``--model`` left out).
"""

import sys

from loglik.testing import sentencepiece_tokenizer, tiny_model

out = sys.argv[1] if len(sys.argv) > 1 else "tiny-model"
tokenizer = sentencepiece_tokenizer()
model = tiny_model("llama", len(tokenizer), scale=10.0)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(out)
