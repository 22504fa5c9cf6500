"""loglik.objective: the response-only NLL equals the scorer's sum, cross-entropy's gradients,
and one big batch's gradient under accumulation; optimising it gives log 0.5, not 0."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from loglik.errors import ConfigError
from loglik.objective import collate, conditional_nll, response_nll, trainer_loss
from loglik.tokenize import Encoder
from loglik.types import Encoded, Example

PAIRS = [
    ("The capital of France is ", "Paris."),
    ("", "Hello, world!"),                              # empty prompt: conditions on BOS/EOS
    ("Question: what is the answer?", " Answer: the answer is forty-two."),
    ("東京は", "日本の首都。🍕"),                          # byte fallback / multi-byte
    ("def add(a, b):\n", "    return a + b"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def _examples(pairs=PAIRS):
    return [Example(p, r) for p, r in pairs]


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _reference_sum(model, batch):
    """Plain formula: cross-entropy over the full logits, response positions only."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(),
                           ignore_index=-100, reduction="sum")


def test_collate_literal():
    batch = collate([Encoded((1, 5), (6, 7), " x y", "joint"), Encoded((1,), (9,), "z", "joint")],
                    pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 5, 6, 7], [1, 9, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7], [-100, 9, -100, -100]]


def test_uniform_head_gives_log_vocab_per_token(tiny_llama, sp_tokenizer):
    """Hand-computed: with a zero output head every token has probability 1/V."""
    import copy

    model = copy.deepcopy(tiny_llama)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    vocab = model.get_output_embeddings().weight.shape[0]
    enc = [Encoded((1, 40), (41, 42, 43), "", "joint"), Encoded((1,), (44,), "", "joint")]
    batch = collate(enc)
    assert conditional_nll(model, batch).item() == pytest.approx(4 * math.log(vocab), abs=1e-4)
    assert conditional_nll(model, batch, reduction="token_mean").item() == pytest.approx(
        math.log(vocab), abs=1e-5)
    assert conditional_nll(model, batch, reduction="sequence_mean").item() == pytest.approx(
        2 * math.log(vocab), abs=1e-5)
    # num_items_in_batch is the divisor of the whole step
    assert conditional_nll(model, batch, reduction="token_mean", num_items_in_batch=8).item() \
        == pytest.approx(4 * math.log(vocab) / 8, abs=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_minus_loss_equals_scorer_sum(name, llama_scorer, gpt2_scorer):
    scorer = {"llama": llama_scorer, "gpt2": gpt2_scorer}[name]
    model = scorer.backend.model
    examples = _examples()
    scores = scorer.score_many(examples)
    batch = collate(scorer.encoder.encode_many(examples))
    with torch.no_grad():
        loss, per_row = response_nll(model, batch, reduction="sum")
    assert -loss.item() == pytest.approx(math.fsum(s.logprob for s in scores), abs=1e-4)
    for s, nll in zip(scores, per_row.tolist()):
        assert -nll == pytest.approx(s.logprob, abs=1e-4)


@pytest.mark.parametrize("family,tok", [("phi", "nobos"), ("gemma2", "sp"), ("opt", "bpe")])
def test_other_families_equal_scorer(family, tok, tokenizers, torch_threads):
    """phi: a head with a bias (fused path); gemma2: soft-capped logits (full-logits path)."""
    from loglik import Scorer
    from loglik.testing import tiny_model

    tokenizer = tokenizers[{"nobos": "no_bos", "sp": "sentencepiece", "bpe": "byte_bpe"}[tok]]
    model = tiny_model(family, len(tokenizer), scale=5.0)
    scorer = Scorer.from_hf(model, tokenizer)
    scores = scorer.score_many(_examples())
    batch = collate(scorer.encoder.encode_many(_examples()))
    loss = conditional_nll(model, batch, chunk_size=7)
    assert -loss.item() == pytest.approx(math.fsum(s.logprob for s in scores), abs=1e-4)
    loss.backward()
    ours = _grads(model)
    model.zero_grad()
    _reference_sum(model, batch).backward()
    for n, g in _grads(model).items():
        torch.testing.assert_close(ours[n], g, rtol=1e-4, atol=1e-5, msg=n)


@pytest.mark.parametrize("name,chunk_size", [("llama", None), ("llama", 3), ("gpt2", 5)])
def test_gradients_match_cross_entropy(name, chunk_size, tiny_llama, sp_tokenizer, tiny_gpt2,
                                       bpe_tokenizer):
    """gpt2 ties the output head to the input embedding: both gradients land on one weight."""
    model, tokenizer = {"llama": (tiny_llama, sp_tokenizer),
                        "gpt2": (tiny_gpt2, bpe_tokenizer)}[name]
    model.eval()                                   # no dropout: the same function twice
    batch = collate(Encoder(tokenizer).encode_many(_examples()))
    model.zero_grad()
    loss = conditional_nll(model, batch, chunk_size=chunk_size)
    loss.backward()
    ours = _grads(model)
    model.zero_grad()
    ref = _reference_sum(model, batch)
    ref.backward()
    theirs = _grads(model)
    model.zero_grad()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-4)
    assert ours.keys() == theirs.keys()
    for n in theirs:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-5, msg=n)


def test_gradient_accumulation_equals_one_big_batch(tiny_gpt2, bpe_tokenizer):
    """k micro-batches of uneven response lengths, each divided by the step's token count,
    sum to the full batch's token-mean gradient; dividing by each micro-batch's own count
    (the pre-4.46 transformers bug) does not."""
    model = tiny_gpt2.eval()                       # no dropout: the same function twice
    enc = Encoder(bpe_tokenizer).encode_many(_examples())
    lengths = [e.num_tokens for e in enc]
    assert len(set(lengths)) > 2                   # uneven
    micro = [enc[:1], enc[1:3], enc[3:]]
    total = sum(lengths)

    model.zero_grad()
    conditional_nll(model, collate(enc), reduction="token_mean").backward()
    full = _grads(model)

    model.zero_grad()
    for part in micro:
        conditional_nll(model, collate(part), reduction="token_mean",
                        num_items_in_batch=total).backward()
    accumulated = _grads(model)
    for n in full:
        torch.testing.assert_close(accumulated[n], full[n], rtol=1e-4, atol=1e-6, msg=n)

    model.zero_grad()
    for part in micro:   # each micro-batch's own mean, averaged over k: not the same gradient
        (conditional_nll(model, collate(part), reduction="token_mean") / len(micro)).backward()
    naive = _grads(model)
    assert max((naive[n] - full[n]).abs().max().item() for n in full) > 1e-3
    model.zero_grad()


def test_sequence_mean_accumulation(tiny_llama, sp_tokenizer):
    enc = Encoder(sp_tokenizer).encode_many(_examples())
    tiny_llama.zero_grad()
    conditional_nll(tiny_llama, collate(enc), reduction="sequence_mean").backward()
    full = _grads(tiny_llama)
    tiny_llama.zero_grad()
    for part in (enc[:2], enc[2:]):
        conditional_nll(tiny_llama, collate(part), reduction="sequence_mean",
                        num_items_in_batch=len(enc)).backward()
    for n, g in _grads(tiny_llama).items():
        torch.testing.assert_close(g, full[n], rtol=1e-4, atol=1e-6, msg=n)
    tiny_llama.zero_grad()


def test_no_grad_skips_gradients(tiny_llama, sp_tokenizer):
    batch = collate(Encoder(sp_tokenizer).encode_many(_examples()))
    with torch.no_grad():
        loss = conditional_nll(tiny_llama, batch)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(conditional_nll(tiny_llama, batch).item(), abs=1e-4)


def test_bf16_autocast_close_to_fp32(tiny_llama, sp_tokenizer):
    batch = collate(Encoder(sp_tokenizer).encode_many(_examples()))
    fp32 = conditional_nll(tiny_llama, batch, reduction="token_mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = conditional_nll(tiny_llama, batch, reduction="token_mean")
    assert bf16.dtype == torch.float32
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)
    bf16.backward()
    assert all(torch.isfinite(p.grad).all() for p in tiny_llama.parameters() if p.grad is not None)
    tiny_llama.zero_grad()


def test_bad_options():
    batch = collate([Encoded((1,), (2,), "", "joint")])
    with pytest.raises(ConfigError, match="reduction must be one of"):
        conditional_nll(None, batch, reduction="mean")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no context token"):
        collate([Encoded((), (2,), "", "joint")])


def test_mean_of_nothing_is_an_error(tiny_llama):
    empty = collate([Encoded((1, 5), (), "", "joint")])
    assert conditional_nll(tiny_llama, empty).item() == 0.0
    with pytest.raises(ConfigError, match="the batch has no response tokens"):
        conditional_nll(tiny_llama, empty, reduction="token_mean")


def test_trainer_loss_equals_objective(tiny_llama, sp_tokenizer):
    batch = collate(Encoder(sp_tokenizer).encode_many(_examples()))
    with torch.no_grad():
        outputs = tiny_llama(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        ours = conditional_nll(tiny_llama, batch, reduction="token_mean", num_items_in_batch=50)
        theirs = trainer_loss(outputs, batch["labels"], num_items_in_batch=50)
        mean = trainer_loss(outputs, batch["labels"])
    assert theirs.item() == pytest.approx(ours.item(), abs=1e-5)
    n = int((batch["labels"][:, 1:] != -100).sum())
    assert mean.item() == pytest.approx(ours.item() * 50 / n, abs=1e-5)


def test_transformers_trainer_with_compute_loss_func(tiny_llama, sp_tokenizer, tmp_path):
    """The docs' example: transformers.Trainer(compute_loss_func=trainer_loss) trains."""
    pytest.importorskip("accelerate")
    import copy

    from transformers import Trainer, TrainingArguments

    model = copy.deepcopy(tiny_llama)
    encoder = Encoder(sp_tokenizer)
    dataset = [{"encoded": e} for e in encoder.encode_many(_examples())]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             gradient_accumulation_steps=2, max_steps=4, learning_rate=1e-2,
                             report_to=[], use_cpu=True, save_strategy="no",
                             logging_strategy="no", remove_unused_columns=False,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=lambda rows: collate([r["encoded"] for r in rows]),
                      compute_loss_func=trainer_loss)
    batch = collate([d["encoded"] for d in dataset])
    with torch.no_grad():
        before = conditional_nll(model, batch).item()
    trainer.train()
    with torch.no_grad():
        after = conditional_nll(model.eval(), batch).item()
    assert after < before


def test_two_responses_converge_to_log_half(sp_tokenizer, torch_threads):
    """The perfect-optimisation limit: with two different responses to one prompt in the
    data, the maximum-likelihood model gives each probability 1/2 (log 0.5), not 1."""
    from loglik import Scorer
    from loglik.testing import tiny_model

    model = tiny_model("llama", len(sp_tokenizer), seed=1)
    pairs = [("The capital of France is ", "Paris."), ("The capital of France is ", "Rome.")]
    encoder = Encoder(sp_tokenizer)
    batch = collate(encoder.encode_many(_examples(pairs)))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(150):
        loss = conditional_nll(model, batch, reduction="sequence_mean")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    scores = Scorer.from_hf(model, sp_tokenizer).score_many(pairs)
    for s in scores:
        assert s.logprob == pytest.approx(math.log(0.5), abs=0.02)
    assert sum(math.exp(s.logprob) for s in scores) == pytest.approx(1.0, abs=0.02)
    # the loss itself converges to log 2 per sequence, its minimum, not to 0
    assert loss.item() == pytest.approx(math.log(2), abs=0.02)


def test_docs_examples_run(tmp_path):
    """The custom loop and both transformers.Trainer examples of docs/training.md run."""
    pytest.importorskip("accelerate")
    import re
    from pathlib import Path

    doc = Path(__file__).parent.parent / "docs" / "training.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for code in blocks:
        exec(code.replace("/tmp/loglik-hf-trainer", str(tmp_path)), namespace)
    model, encoded = namespace["model"], namespace["encoded"]
    with torch.no_grad():
        loss = conditional_nll(model.eval(), collate(encoded), reduction="token_mean")
    vocab = len(namespace["tokenizer"])
    assert loss.item() < 0.6 * math.log(vocab)   # from about log(V) per token at random init


def test_no_vocab_by_sequence_tensor_is_kept_for_backward(tiny_llama, sp_tokenizer):
    """The fused head keeps (N, H) and (V, H) gradients, never (N, V) logits, for backward;
    the plain formula keeps the full logits (which shows the check can fail)."""
    batch = collate(Encoder(sp_tokenizer).encode_many(_examples()))
    n = int((batch["labels"] != -100).sum())
    vocab = tiny_llama.get_output_embeddings().weight.shape[0]

    def largest_saved(fn) -> int:
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t,
                                                      lambda t: t):
            loss = fn()
        loss.backward()
        tiny_llama.zero_grad()
        return max(sizes)

    assert largest_saved(lambda: conditional_nll(tiny_llama, batch)) < n * vocab
    assert largest_saved(lambda: _reference_sum(tiny_llama, batch)) >= n * vocab


# -- packed rows ---------------------------------------------------------------------------
FAMILIES = [("llama", "sentencepiece"), ("gpt2", "byte_bpe"), ("phi", "no_bos"),
            ("gemma2", "sentencepiece"), ("opt", "byte_bpe")]


@pytest.mark.parametrize("family,tok", FAMILIES)
def test_packed_batch_equals_padded_batch(family, tok, tokenizers):
    """Several examples per row (block-diagonal mask, positions restarting per example):
    the same loss and the same gradients as one padded row each, and as the plain formula.
    gpt2/opt: learned absolute positions; gemma2: sliding-window layers + soft-capping."""
    from loglik.testing import tiny_model
    from loglik.train_packing import collate_packed, packing_trains

    tokenizer = tokenizers[tok]
    model = tiny_model(family, len(tokenizer), scale=5.0)
    enc = Encoder(tokenizer).encode_many(_examples())
    padded, packed = collate(enc), collate_packed(enc, row_tokens=40)
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]   # really packed
    assert (packed["sequence_ids"].max(1).values >= 1).any()
    assert packing_trains(model)

    model.zero_grad()
    loss = conditional_nll(model, packed, reduction="token_mean")
    loss.backward()
    ours = _grads(model)
    model.zero_grad()
    ref = conditional_nll(model, padded, reduction="token_mean")
    ref.backward()
    theirs = _grads(model)
    model.zero_grad()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert ours.keys() == theirs.keys()
    for n in theirs:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-5, msg=n)
    n_tokens = sum(e.num_tokens for e in enc)
    with torch.no_grad():
        plain = _reference_sum(model, padded).item()
    assert loss.item() * n_tokens == pytest.approx(plain, abs=1e-3)


def test_packed_rows_do_not_leak_between_examples(tiny_llama):
    """Changing one example's tokens leaves its row neighbour's loss unchanged."""
    from loglik.train_packing import collate_packed

    a = Encoded((1, 40, 41), (42, 43, 44), "", "joint")
    b, b2 = Encoded((1, 50), (51, 52), "", "joint"), Encoded((1, 60), (61, 52), "", "joint")
    with torch.no_grad():
        alone = response_nll(tiny_llama, collate([a]))[0].item()
        for other in (b, b2):
            batch = collate_packed([a, other], row_tokens=16)
            assert batch["input_ids"].shape[0] == 1
            labels = batch["labels"].clone()
            labels[batch["sequence_ids"] != 0] = -100           # score example a only
            loss = response_nll(tiny_llama, {**batch, "labels": labels})[0].item()
            assert loss == pytest.approx(alone, abs=1e-4)


def test_packed_bf16_autocast_close_to_fp32(tiny_llama, sp_tokenizer):
    from loglik.train_packing import collate_packed

    batch = collate_packed(Encoder(sp_tokenizer).encode_many(_examples()))
    fp32 = conditional_nll(tiny_llama, batch, reduction="token_mean")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = conditional_nll(tiny_llama, batch, reduction="token_mean")
    assert bf16.item() == pytest.approx(fp32.item(), rel=0.05)


def test_a_model_without_custom_masks_fails_the_packing_check(sp_tokenizer):
    """A body that drops 4D masks (as flash-attention kernels do) would let packed examples
    see each other: the check says so, and the trainer pads instead."""
    from transformers.models.llama.modeling_llama import LlamaModel

    from loglik.testing import tiny_model
    from loglik.train_packing import packing_trains

    class CausalOnly(LlamaModel):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            if attention_mask is not None and attention_mask.dim() == 4:
                attention_mask = None    # and positions too: transformers would infer the
                kwargs.pop("position_ids", None)   # packing from restarting positions
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    model = tiny_model("llama", len(sp_tokenizer), scale=5.0)
    assert packing_trains(model)
    body = CausalOnly(model.config)
    body.load_state_dict(model.model.state_dict())
    model.model = body
    assert not packing_trains(model)
    model.config._attn_implementation = "flash_attention_2"
    assert not packing_trains(model)


# -- LoRA ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_lora_objective_is_exact_and_only_adapters_get_gradients(name, tokenizers):
    """With LoRA on, -loss equals the scorer's sum for the merged model, and the adapters'
    gradients equal those of the plain formula; the frozen weights get none."""
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model

    from loglik import Scorer
    from loglik.testing import tiny_model
    from loglik.train_lora import trainable_model
    from loglik.train_packing import collate_packed

    tokenizer = tokenizers["sentencepiece" if name == "llama" else "byte_bpe"]
    base = tiny_model(name, len(tokenizer), scale=5.0)
    # random A and B (peft's default B = 0 would make every A gradient zero)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                 init_lora_weights=False))
    lm = trainable_model(peft_model)
    enc = Encoder(tokenizer).encode_many(_examples())
    for batch in (collate(enc), collate_packed(enc, row_tokens=40)):
        lm.zero_grad()
        loss = conditional_nll(lm, batch, chunk_size=5)
        loss.backward()
        ours = _grads(lm)
        lm.zero_grad()
        _reference_sum(lm, collate(enc)).backward()
        theirs = _grads(lm)
        lm.zero_grad()
        assert ours and all("lora_" in n for n in ours)
        assert ours.keys() == theirs.keys()
        for n in theirs:
            torch.testing.assert_close(ours[n], theirs[n], rtol=1e-4, atol=1e-5, msg=n)
    merged = peft_model.merge_and_unload()
    scores = Scorer.from_hf(merged, tokenizer).score_many(_examples())
    assert -loss.item() == pytest.approx(math.fsum(s.logprob for s in scores), abs=1e-3)
