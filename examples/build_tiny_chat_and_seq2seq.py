"""Build a tiny random chat model (ChatML template) and a tiny random T5 in folders (offline).

    python examples/build_tiny_chat_and_seq2seq.py /tmp/loglik-chat /tmp/loglik-t5

Random weights: the numbers they give are only for trying the commands.
"""

import sys

from loglik.testing import chat_tokenizer, metaspace_always_tokenizer, tiny_model, tiny_seq2seq

chat_dir = sys.argv[1] if len(sys.argv) > 1 else "tiny-chat"
t5_dir = sys.argv[2] if len(sys.argv) > 2 else "tiny-t5"
tok = chat_tokenizer("chatml")
tiny_model("llama", len(tok), scale=4.0).save_pretrained(chat_dir)
tok.save_pretrained(chat_dir)
tok = metaspace_always_tokenizer()
tiny_seq2seq("t5", tok, scale=4.0).save_pretrained(t5_dir)
tok.save_pretrained(t5_dir)
print(chat_dir, t5_dir)
