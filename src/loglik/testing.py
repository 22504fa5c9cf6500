"""Tiny models and tokenizers built offline, for tests, docs and benchmarks.

Nothing here downloads anything: tokenizers are trained on :data:`CORPUS` (or text you pass)
with the ``tokenizers`` library, models are built from configs with random weights.
Three tokenizer styles cover the boundary and BOS rules:

* :func:`byte_bpe_tokenizer` — byte-level BPE, BOS = EOS = ``<|endoftext|>`` never added
  (GPT-2 style);
* :func:`sentencepiece_tokenizer` — ``▁`` word marker, dummy prefix, byte fallback
  (``<0xNN>`` tokens), adds ``<s>`` (Llama style);
* :func:`no_bos_tokenizer` — byte-level BPE with an EOS token and no BOS token at all.

Four more styles that real models ship with, for the boundary and special-token tests
(:data:`TOKENIZER_STYLES` names every builder):

* :func:`llama2_tokenizer` — SentencePiece converted the way transformers converts Llama-2 and
  Mistral (``legacy=False``): Metaspace ``prepend_scheme="first"``, ``split=False``, decoder
  Replace -> ByteFallback -> Fuse -> Strip;
* :func:`metaspace_always_tokenizer` — Metaspace ``prepend_scheme="always"`` (every text gets
  the dummy prefix, the decoder strips it: older SentencePiece conversions, T5);
* :func:`prefix_space_bpe_tokenizer` — byte-level BPE with ``add_prefix_space=True``
  (RoBERTa, BART): ``"Hello"`` and ``" Hello"`` are the same tokens;
* :func:`wordpiece_tokenizer` — cased WordPiece (BERT style): ``##`` continuations, whitespace
  not kept, so its decode is lossy;
* :func:`lossy_tokenizer` — BPE over whitespace-split words with no decoder: decode joins
  tokens with single spaces, so no tokenization can reproduce ``"Answer"`` after ``"Ans"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

CORPUS = """The capital of France is Paris. The capital of Italy is Rome.
Answer: the answer is forty-two. Question: what is the answer?
def add(a, b):
    \"\"\"Return the sum of a and b.\"\"\"
    return a + b
The quick brown fox jumps over the lazy dog. The dog sleeps.
In 1998, 12,345 people visited the museum; in 1999, 23,456 did.
She said: "Hello, world!" and he replied, "Goodbye..."
Machine learning models compute probabilities of tokens given a context.
The log-likelihood of a response is the sum of its token log-probabilities.
东京是日本的首都。北京是中国的首都。
Pizza 🍕 and coffee ☕ are great. I love 🍕!
Newlines
and	tabs	separate   words   sometimes.
https://example.com/path?query=value&other=1
""" * 3


def _trained_bpe(corpus: Iterable[str], vocab_size: int, special: list[str],
                 byte_level: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None if byte_level else "<unk>"))
    if byte_level:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    else:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = []
    limit = {} if byte_level else {"limit_alphabet": 80}   # rare chars -> byte fallback
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=alphabet, show_progress=False, **limit)
    tok.train_from_iterator(list(corpus), trainer=trainer)
    return tok


def byte_bpe_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400) -> Any:
    """GPT-2 style: byte-level BPE; BOS = EOS = ``<|endoftext|>``, never added by itself."""
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(corpus or CORPUS.splitlines(True), vocab_size, ["<|endoftext|>"], True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", model_max_length=1024)


def no_bos_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400) -> Any:
    """Byte-level BPE with an EOS token ``</s>`` and no BOS token at all."""
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(corpus or CORPUS.splitlines(True), vocab_size, ["</s>"], True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", model_max_length=1024)


def sentencepiece_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 500) -> Any:
    """Llama style: ``▁`` marks words, a dummy prefix space, byte fallback, adds ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    special = ["<unk>", "<s>", "</s>"]
    trained = json.loads(_trained_bpe(corpus or CORPUS.splitlines(True), vocab_size, special,
                                      False).to_str())["model"]
    vocab = {t: i for i, t in enumerate(special + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1024)


def _bpe_vocab(corpus: Iterable[str] | None, vocab_size: int, special: list[str]
               ) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A ▁-marked BPE vocabulary with the 256 byte-fallback tokens after ``special``."""
    trained = json.loads(_trained_bpe(corpus or CORPUS.splitlines(True), vocab_size, special,
                                      False).to_str())["model"]
    vocab = {t: i for i, t in enumerate(special + [f"<0x{b:02X}>" for b in range(256)])}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    return vocab, merges   # type: ignore[return-value]


def llama2_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 500) -> Any:
    """Llama-2/Mistral as transformers converts them with ``legacy=False``; adds ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _bpe_vocab(corpus, vocab_size, ["<unk>", "<s>", "</s>"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=1024)


def metaspace_always_tokenizer(corpus: Iterable[str] | None = None,
                               vocab_size: int = 500) -> Any:
    """Metaspace ``prepend_scheme="always"``, byte fallback, EOS ``</s>``, no BOS (T5-like)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _bpe_vocab(corpus, vocab_size, ["<pad>", "</s>", "<unk>"])
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>",
                               byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(),
                                     decoders.Metaspace(replacement="▁",
                                                        prepend_scheme="always")])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=1024)


def prefix_space_bpe_tokenizer(corpus: Iterable[str] | None = None,
                               vocab_size: int = 400) -> Any:
    """RoBERTa/BART style byte-level BPE with ``add_prefix_space=True``; ``<s>`` ... ``</s>``."""
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = _trained_bpe(corpus or CORPUS.splitlines(True), vocab_size,
                       ["<s>", "<pad>", "</s>", "<unk>"], True)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", model_max_length=1024)


def wordpiece_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 500) -> Any:
    """Cased BERT-style WordPiece: ``[CLS] ... [SEP]``, ``##`` continuations."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=special,
                                        show_progress=False)
    tok.train_from_iterator(list(corpus or CORPUS.splitlines(True)), trainer=trainer)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, cls_token="[CLS]", sep_token="[SEP]",
                                   pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]",
                                   model_max_length=1024)


def lossy_tokenizer(corpus: Iterable[str] | None = None, vocab_size: int = 400) -> Any:
    """BPE over whitespace-split words and no decoder: decode joins tokens with one space."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(list(corpus or CORPUS.splitlines(True)), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>",
                                   model_max_length=1024)


TOKENIZER_STYLES = {
    "byte_bpe": byte_bpe_tokenizer,
    "sentencepiece": sentencepiece_tokenizer,
    "no_bos": no_bos_tokenizer,
    "llama2": llama2_tokenizer,
    "metaspace_always": metaspace_always_tokenizer,
    "prefix_space_bpe": prefix_space_bpe_tokenizer,
    "wordpiece": wordpiece_tokenizer,
    "lossy": lossy_tokenizer,
}
"""Every tokenizer builder by style name. The last two decode lossily: where no
tokenization can keep the boundary guarantee they are the tokenizer's fault (an error)."""


FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "gpt_neox", "opt", "phi", "gemma2")


def tiny_config(family: str, vocab_size: int, *, hidden: int = 32, layers: int = 2,
                heads: int = 4, max_positions: int = 256, **overrides: Any) -> Any:
    """A small config of one model family (random weights once instantiated)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                  num_attention_heads=heads, intermediate_size=2 * hidden,
                  max_position_embeddings=max_positions)
    gqa = dict(num_key_value_heads=max(1, heads // 2))
    builders = {
        "gpt2": lambda: tf.GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers,
                                      n_head=heads, n_positions=max_positions,
                                      bos_token_id=None, eos_token_id=None),
        "llama": lambda: tf.LlamaConfig(**common, **gqa),
        "mistral": lambda: tf.MistralConfig(**common, **gqa),
        "qwen2": lambda: tf.Qwen2Config(**common, **gqa),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**common),
        "opt": lambda: tf.OPTConfig(vocab_size=vocab_size, hidden_size=hidden,
                                    num_hidden_layers=layers, num_attention_heads=heads,
                                    ffn_dim=2 * hidden, max_position_embeddings=max_positions,
                                    word_embed_proj_dim=hidden),
        "phi": lambda: tf.PhiConfig(**common),
        "gemma2": lambda: tf.Gemma2Config(**common, **gqa, head_dim=hidden // heads,
                                          final_logit_softcapping=5.0,
                                          attn_logit_softcapping=50.0, sliding_window=64),
    }
    if family not in builders:
        raise ValueError(f"unknown family {family!r}; use one of {', '.join(FAMILIES)}")
    config = builders[family]()
    for key, value in overrides.items():
        setattr(config, key, value)
    return config


def tiny_model(family: str, vocab_size: int, *, seed: int = 0, scale: float = 1.0,
               **config: Any) -> Any:
    """A randomly initialised causal LM of ``family`` in eval mode.

    ``scale`` multiplies the output head so next-token distributions are far from uniform
    (random init alone gives near-uniform ones, which would hide errors in tests).
    """
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, **config))
    if scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
    return model.eval()


# -- chat templates (conversations) -------------------------------------------------------------
CHAT_TEMPLATES = {
    # ChatML (Qwen, many fine-tunes): generation prompt "<|im_start|>assistant\n"
    "chatml": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
               "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
               "{% endif %}"),
    # Llama-2 chat: the template writes BOS, strips contents, ends a turn with EOS
    "llama2": ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] "
               "{{ m['content'].strip() }} [/INST]{% elif m['role'] == 'system' %}<<SYS>>\n"
               "{{ m['content'] }}\n<</SYS>>\n\n{% else %} {{ m['content'].strip() }} "
               "{{ eos_token }}{% endif %}{% endfor %}"),
    # a generation prompt ending in a space, which byte-level BPE merges into the content
    "space_prompt": ("{% for m in messages %}{% if m['role'] == 'user' %}User: "
                     "{{ m['content'] }}\n{% else %}Assistant: {{ m['content'] }}<|im_end|>\n"
                     "{% endif %}{% endfor %}{% if add_generation_prompt %}Assistant: "
                     "{% endif %}"),
    # Qwen3-like: reasoning blocks of earlier assistant turns are removed from the rendering
    "reasoning": ("{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
                  "<|im_start|>assistant\n{{ m['content'].split('</think>')[-1].lstrip() }}"
                  "<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
                  "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
                  "<|im_start|>assistant\n{% endif %}"),
    # ChatML with {% generation %} blocks (for return_assistant_tokens_mask)
    "chatml_generation": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
                          "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                          "<|im_end|>{% endgeneration %}{% else %}{{ m['content'] }}<|im_end|>"
                          "{% endif %}\n{% endfor %}{% if add_generation_prompt %}"
                          "<|im_start|>assistant\n{% endif %}"),
}
"""Chat templates in the styles real models ship, for :func:`chat_tokenizer`."""


def chat_tokenizer(style: str = "chatml") -> Any:
    """A tokenizer with the chat template ``style`` of :data:`CHAT_TEMPLATES`.

    ``llama2`` is built on :func:`sentencepiece_tokenizer`; the others on
    :func:`byte_bpe_tokenizer` with ``<|im_start|>`` and ``<|im_end|>`` added as special tokens.
    """
    if style not in CHAT_TEMPLATES:
        raise ValueError(f"unknown chat style {style!r}; use one of {', '.join(CHAT_TEMPLATES)}")
    if style == "llama2":
        tok = sentencepiece_tokenizer()
    else:
        tok = byte_bpe_tokenizer()
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATES[style]
    return tok


def tiny_seq2seq(family: str, tokenizer: Any, *, seed: int = 0, scale: float = 1.0,
                 hidden: int = 32, layers: int = 2, heads: int = 4) -> Any:
    """A randomly initialised encoder-decoder LM (``"t5"`` or ``"bart"``) in eval mode.

    Special-token ids come from ``tokenizer`` (build T5 with :func:`metaspace_always_tokenizer`,
    BART with :func:`prefix_space_bpe_tokenizer`); ``scale`` multiplies the output head.
    """
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if family == "t5":
        config = tf.T5Config(vocab_size=vocab, d_model=hidden, d_kv=hidden // heads,
                             d_ff=2 * hidden, num_layers=layers, num_heads=heads,
                             pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id,
                             decoder_start_token_id=tokenizer.pad_token_id)
    elif family == "bart":
        config = tf.BartConfig(vocab_size=vocab, d_model=hidden, encoder_layers=layers,
                               decoder_layers=layers, encoder_attention_heads=heads,
                               decoder_attention_heads=heads, encoder_ffn_dim=2 * hidden,
                               decoder_ffn_dim=2 * hidden, max_position_embeddings=256,
                               pad_token_id=tokenizer.pad_token_id,
                               bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id,
                               decoder_start_token_id=tokenizer.eos_token_id,
                               forced_bos_token_id=None)
    else:
        raise ValueError(f"unknown encoder-decoder family {family!r}; use 't5' or 'bart'")
    model = tf.AutoModelForSeq2SeqLM.from_config(config)
    if scale != 1.0:
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(scale)
    return model.eval()
