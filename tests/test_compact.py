"""loglik's own plain-Llama module (backends/hf/compact.py) against transformers' Llama on the
same weights, against the float64 reference, and as what the default model loads into."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from loglik import Scorer
from loglik.backends.base import TORCH_MODEL, supports
from loglik.backends.hf.compact import CompactLlama, KVCache, load_compact, supported
from loglik.default_model import default_model_path
from loglik.logprobs import reference_logprobs
from loglik.masks import additive_mask
from loglik.tokenize import FileTokenizer, HFTokenizer, file_tokenizer, token_texts

PAIRS = [("def add(a, b):\n", '    """Add two numbers."""\n'),
         ("The capital of France is", " Paris."),
         ("x = ", "1 + 2"),
         ("import os\n", "print(os.getcwd())\n")]


@pytest.fixture(scope="module")
def both(tiny_model_dir, torch_threads):
    """(compact, transformers) models of the suite's tiny GQA Llama (untied head)."""
    from transformers import AutoModelForCausalLM

    compact = load_compact(tiny_model_dir)
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    return compact, hf


def _ids(n: int, b: int = 2, seed: int = 0, vocab: int = 100) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, n), generator=g)


def test_logits_equal_transformers_llama(both):
    compact, hf = both
    ids = _ids(12)
    with torch.inference_mode():
        got = compact(ids).logits
        want = hf(input_ids=ids).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-5


def test_padding_mask_and_positions_as_transformers(both):
    compact, hf = both
    ids = _ids(10, b=3, seed=1)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0                                   # right padding
    mask[2, :3] = 0                                   # left padding: a fully masked row
    pos = torch.arange(10).expand(3, 10) + torch.tensor([[0], [5], [2]])
    with torch.inference_mode():
        got = compact(ids, attention_mask=mask, position_ids=pos).logits
        want = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    keep = mask.bool()
    assert not got.isnan().any()
    assert (got[keep] - want[keep]).abs().max().item() < 1e-5


def test_additive_4d_mask_as_transformers(both):
    """A block-diagonal mask with restarted positions: two sequences in one row."""
    compact, hf = both
    ids = _ids(9, b=1, seed=2)
    seg = torch.tensor([0] * 5 + [1] * 4)
    q = torch.arange(9)
    ok = (seg[:, None] == seg[None, :]) & (q[None, :] <= q[:, None])      # (T, T)
    mask = additive_mask(ok.unsqueeze(0), torch.float32)                  # (1, 1, T, T)
    pos = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2, 3]])
    with torch.inference_mode():
        got = compact(ids, attention_mask=mask, position_ids=pos).logits
        want = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
        alone = compact(ids[:, 5:]).logits
    assert (got - want).abs().max().item() < 1e-5
    assert (got[:, 5:] - alone).abs().max().item() < 1e-5               # packing = alone


def test_cache_continues_the_sequence(both):
    compact, _ = both
    ids = _ids(11, b=2, seed=3)
    with torch.inference_mode():
        full = compact(ids).logits
        cache = KVCache()
        first = compact(ids[:, :6], use_cache=True, past_key_values=cache)
        second = compact(ids[:, 6:], use_cache=True, past_key_values=first.past_key_values)
    assert cache.length() == 11
    assert (second.logits - full[:, 6:]).abs().max().item() < 1e-5
    assert (first.logits - full[:, :6]).abs().max().item() < 1e-5


def test_scorer_on_compact_matches_float64_reference_and_passes_self_checks(tiny_model_dir,
                                                                           both):
    compact, hf = both
    from transformers import AutoTokenizer

    scorer = Scorer.from_hf(compact, AutoTokenizer.from_pretrained(tiny_model_dir))
    assert scorer.backend.verdicts == {"fast": True, "unmasked_padding": True,
                                       "packing": True, "kv_sharing": True}
    assert not supports(scorer.backend, TORCH_MODEL)      # no generate: not offered
    pairs = PAIRS + [(PAIRS[0][0], r) for _, r in PAIRS]  # shared contexts too
    for (p, r), s in zip(pairs, scorer.score_many(pairs)):
        enc = scorer.encode(p, r)
        ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])
        with torch.inference_mode():
            ref = reference_logprobs(hf(input_ids=ids).logits, ids)[0, -len(enc.response_ids):]
        assert s.logprob == pytest.approx(math.fsum(ref.tolist()), abs=1e-4)


def test_default_model_loads_compact_with_transformers_numbers():
    compact = Scorer.from_pretrained()
    full = Scorer.from_pretrained(default_model_path())
    assert isinstance(compact.backend.model, CompactLlama)
    assert isinstance(compact.tokenizer, FileTokenizer)
    assert not isinstance(full.backend.model, CompactLlama)
    assert supports(full.backend, TORCH_MODEL)
    for a, b in zip(compact.score_many(PAIRS), full.score_many(PAIRS)):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert a.token_ids == b.token_ids


@pytest.mark.parametrize("change", [
    {"model_type": "mistral"}, {"hidden_act": "gelu"}, {"attention_bias": True},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_parameters": {"rope_type": "llama3", "rope_theta": 10000.0}}])
def test_configs_it_does_not_compute_exactly_load_through_transformers(change, tmp_path):
    with open(default_model_path() + "/config.json") as f:
        config = json.load(f)
    assert supported(config)
    config.update(change)
    assert not supported(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_compact(str(tmp_path)) is None


@pytest.mark.slow
def test_default_model_score_skips_transformers_model_imports(tmp_path):
    """The start-up point of the module: a default-model run never imports transformers or
    torch's compiler (bench/startup.py measures the time)."""
    code = ("import sys, loglik\n"
            "s = loglik.Scorer.from_pretrained()\n"
            "s.score_many([('def f(x):\\n', '    return x\\n'), ('a', 'b')])\n"
            "bad = [m for m in ('transformers', 'torch._dynamo') "
            "if m in sys.modules]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "LOGLIK_CACHE_DIR": str(tmp_path)})
    assert out.stdout.strip().splitlines()[-1] == "[]"


TEXTS = ["def f(x):\n    return x\n", "", " ", "  leading", "trailing  \n\n", "x = </s> <s>",
         "caf\u00e9 \u00fcber na\u00efve", "\U0001f99c emoji \u4e2d\u6587", "\t\ttabs\r\n",
         '"""doc"""', "<unk>", "a" * 300]


@pytest.mark.parametrize("parse_special", [False, True])
def test_file_tokenizer_equals_transformers_tokenizer(parse_special):
    """The default model's tokenizer read by `tokenizers` alone gives transformers' ids,
    tokens, decodes and special-token handling."""
    from transformers import AutoTokenizer

    fast = file_tokenizer(default_model_path()).with_parse_special(parse_special)
    ref = HFTokenizer(AutoTokenizer.from_pretrained(default_model_path()),
                      parse_special=parse_special)
    assert (fast.bos_token_id, fast.eos_token_id, fast.adds_bos, len(fast)) == \
        (ref.bos_token_id, ref.eos_token_id, ref.adds_bos, len(ref))
    ids = fast.encode_batch(TEXTS)
    assert ids == ref.encode_batch(TEXTS)
    assert (fast.eos_token_id in ids[5]) == parse_special        # "</s>" typed by a user
    for seq in ids + [[0, 5, 1, 7], []]:
        assert fast.decode(seq) == ref.decode(seq)
        assert fast.convert_ids_to_tokens(seq) == ref.convert_ids_to_tokens(seq)
    assert fast.decode_batch(ids) == ref.decode_batch(ids)
    assert fast._hf is None                                       # transformers never needed


def test_file_tokenizer_only_for_plain_folders(tmp_path):
    assert isinstance(file_tokenizer(default_model_path()), FileTokenizer)
    assert file_tokenizer(str(tmp_path)) is None                          # no files
    for name in ("tokenizer.json", "tokenizer_config.json"):
        with open(f"{default_model_path()}/{name}") as f:
            (tmp_path / name).write_text(f.read())
    assert isinstance(file_tokenizer(str(tmp_path)), FileTokenizer)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {**config, "chat_template": "{{ messages }}"}))
    assert file_tokenizer(str(tmp_path)) is None                          # needs transformers


def test_default_model_scores_conversations_through_the_lazy_transformers_tokenizer():
    """A chat template the user gives still works: `hf` loads when first asked for."""
    template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    messages = [{"role": "user", "content": "add two numbers"},
                {"role": "assistant", "content": "def add(a, b):"}]
    got = Scorer.from_pretrained(chat_template=template).score_many([{"messages": messages}])
    want = Scorer.from_pretrained(default_model_path(), chat_template=template).score_many(
        [{"messages": messages}])
    assert got[0].logprob == pytest.approx(want[0].logprob, abs=1e-5)
    assert got[0].num_tokens == want[0].num_tokens > 3


def test_token_texts_with_the_file_tokenizer():
    scorer = Scorer.from_pretrained()
    for prompt, response in PAIRS + [("x", " \U0001f99c caf\u00e9")]:
        enc = scorer.encode(prompt, response)
        assert "".join(token_texts(scorer.tokenizer, enc)) == enc.response_text
