"""Backends: token ids in, per-token log-probs out (protocol in :mod:`.base`).

* :mod:`.hf` — Hugging Face ``transformers`` models, the default and the exactness reference;
* :mod:`.fake` — a table-driven model with a word tokenizer, for tests and documentation.
"""
