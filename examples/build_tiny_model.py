"""Build a tiny random Llama-style model and tokenizer in a folder (offline).

Stand-in until the embedded default model ships:
    python examples/build_tiny_model.py /tmp/loglik-tiny
"""

import sys

from loglik.testing import sentencepiece_tokenizer, tiny_model

out = sys.argv[1] if len(sys.argv) > 1 else "tiny-model"
tokenizer = sentencepiece_tokenizer()
model = tiny_model("llama", len(tokenizer), scale=10.0)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
print(out)
