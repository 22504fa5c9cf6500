"""The shipped default model: it loads, is exact, and has learned what it was trained on.

A broken, truncated or untrained model fails here: the conditional-matching sample needs a
model that reads the signature (an untrained one is near 50%), and the held-out NLL must beat
the unigram distribution of the training split (an untrained one is far worse than that).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from loglik.default_model import DEFAULT_MODEL_DIR

ROOT = Path(__file__).resolve().parent.parent
HELDOUT_PAIRS = ROOT / "data" / "default_model" / "heldout_pairs.jsonl"
SCRIPTS = ROOT / "scripts"

needs_model = pytest.mark.skipif(
    not (DEFAULT_MODEL_DIR / "config.json").exists(),
    reason=f"no shipped default model in {DEFAULT_MODEL_DIR} (build it with "
           "scripts/build_default_model.py all)")

# The issue asks for 90%; the shipped model reaches 90.7% (392 of 432, MODEL.md). A broken
# or untrained model is far below: untrained 53.5%, after phase 1 56.7%.
MIN_MATCHING = 0.9


def _corpus():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import default_model_eval
        import stdlib_corpus
    finally:
        sys.path.remove(str(SCRIPTS))
    return stdlib_corpus, default_model_eval


@pytest.fixture(scope="module")
def hf_tok():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR))


@pytest.fixture(scope="module")
def scorer(torch_threads):
    import loglik

    return loglik.Scorer.from_pretrained()


@needs_model
def test_files_are_the_standard_layout_and_small():
    names = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "MODEL.md"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir() if p.is_file())
    assert size < 25 * 2**20
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama"
    card = (DEFAULT_MODEL_DIR / "MODEL.md").read_text()
    assert "scripts/build_default_model.py all" in card and "bits per byte" in card


@needs_model
def test_loads_and_scores(scorer, hf_tok):
    """Load time is measured in bench/startup.py, not asserted on a shared CPU."""
    s = scorer.score("def f(x):\n", '    """Return x."""')
    assert s.num_tokens > 0 and s.logprob < 0
    assert hf_tok.bos_token == "<s>" and len(hf_tok) == 8192


@needs_model
def test_tokenizer_adds_bos_and_round_trips(hf_tok):
    tok = hf_tok
    text = 'def add(a, b):\n    """Return the sum of a and b."""\n'
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert tok.decode(ids, skip_special_tokens=True) == text


@needs_model
def test_exact_against_float64_reference(scorer):
    import torch

    from loglik.logprobs import reference_logprobs

    prompt, response = "def add(a, b):\n", '    """Return the sum of a and b."""'
    s = scorer.score(prompt, response)
    enc = scorer.encode(prompt, response)
    ids = torch.tensor([enc.context_ids + enc.response_ids])                # (1, T)
    model = scorer.backend.model
    with torch.no_grad():
        ref = reference_logprobs(model(input_ids=ids).logits, ids)[0]       # (T-1,)
    want = ref[len(enc.context_ids) - 1:].tolist()
    torch.testing.assert_close(torch.tensor(s.token_logprobs, dtype=torch.float64),
                               torch.tensor(want, dtype=torch.float64), atol=1e-4, rtol=0)
    assert math.isclose(s.logprob, math.fsum(want), abs_tol=1e-4)


@needs_model
def test_prefers_the_docstring_that_fits(scorer):
    # hand-picked plausibility: a docstring about sums after `def add`, not after `def split`
    doc = '    """Return the sum of a and b."""'
    own = scorer.score("def add(a, b):\n", doc).logprob
    other = scorer.score("def split_lines(text, keepends=False):\n", doc).logprob
    assert own > other


def test_heldout_pairs_file():
    rows = [json.loads(x) for x in HELDOUT_PAIRS.read_text(encoding="utf-8").splitlines()]
    stdlib_corpus, _ = _corpus()
    assert len(rows) >= 300
    assert {r["module"] for r in rows} <= set(stdlib_corpus.HELDOUT_MODULES)
    for r in rows:
        assert r["prompt"].endswith("\n") and r["response"].lstrip().startswith(('"', "'", "r", "u"))


THIRDPARTY_PAIRS = ROOT / "data" / "default_model" / "heldout_thirdparty_pairs.jsonl"


def _thirdparty():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import thirdparty_pairs
    finally:
        sys.path.remove(str(SCRIPTS))
    return thirdparty_pairs


def test_thirdparty_pairs_file_is_what_the_script_extracts():
    """400 pairs, 100 per named package, none from the stdlib; re-extracted from the
    installed packages it is the same file (where the installed versions are the recorded)."""
    import importlib.metadata

    tp = _thirdparty()
    stdlib_corpus, _ = _corpus()
    rows = [json.loads(x) for x in THIRDPARTY_PAIRS.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == tp.PER_PACKAGE * len(tp.PACKAGES)
    assert {r["module"] for r in rows} == set(tp.PACKAGES)
    stdlib = {f.module for f in stdlib_corpus.iter_source_files()}
    assert not set(tp.PACKAGES) & stdlib          # never in the default model's corpus
    recorded = {r["module"]: r["version"] for r in rows}
    try:
        installed = {n: importlib.metadata.version(d) for n, d in tp.PACKAGES.items()}
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("a held-out third-party package is not installed")
    if installed != recorded:
        pytest.skip(f"installed versions {installed} differ from the recorded {recorded}")
    assert tp.extract() == rows


def test_build_drops_train_pairs_equal_to_a_thirdparty_pair():
    tp = _thirdparty()
    stdlib_corpus, _ = _corpus()
    row = json.loads(THIRDPARTY_PAIRS.read_text(encoding="utf-8").splitlines()[0])
    same = stdlib_corpus.Pair("x.py:f", "x", row["prompt"], row["response"], "function", 4)
    other = stdlib_corpus.Pair("x.py:g", "x", "def g():\n", '    """Other."""', "function", 4)
    assert tp.excluded([same, other]) == ([other], 1)


@pytest.mark.slow
@needs_model
def test_conditional_matching_on_the_thirdparty_pairs(scorer):
    """The card's third-party figure reproduces (a model that ignores the signature: ~50%)."""
    import re

    _, ev = _corpus()
    rows = [json.loads(x) for x in THIRDPARTY_PAIRS.read_text(encoding="utf-8").splitlines()]
    result = ev.matching(scorer, rows, seed=0)
    card = (DEFAULT_MODEL_DIR / "MODEL.md").read_text()
    stated = float(re.search(r"the same matching in\s+\*\*([\d.]+)%\*\*", card).group(1))
    assert abs(100 * result["rate"] - stated) < 0.5
    assert result["rate"] > 0.6 and result["mean_gap_nats"] > 0


@pytest.mark.slow
@needs_model
def test_conditional_matching_on_the_heldout_pairs(scorer):
    import re

    _, ev = _corpus()
    rows = [json.loads(x) for x in HELDOUT_PAIRS.read_text(encoding="utf-8").splitlines()]
    result = ev.matching(scorer, rows, seed=0)
    assert result["rate"] >= MIN_MATCHING, result
    assert result["mean_gap_nats"] > 0
    card = (DEFAULT_MODEL_DIR / "MODEL.md").read_text()
    stated = float(re.search(r"in \*\*([\d.]+)%\*\* of pairs", card).group(1))
    assert abs(100 * result["rate"] - stated) < 0.5          # the card's figure reproduces


@pytest.mark.slow
@needs_model
def test_heldout_source_beats_the_unigram_baseline(scorer, hf_tok):
    stdlib_corpus, ev = _corpus()
    files = list(stdlib_corpus.iter_source_files())
    tok = hf_tok
    heldout = [f for f in files if f.module in ("textwrap", "heapq", "fractions")]
    assert heldout, "the held-out modules are missing from this Python's standard library"

    def count(lines):
        return [len(ids) for ids in tok(lines, add_special_tokens=False)["input_ids"]]

    docs = [d for f in heldout for d in stdlib_corpus.line_chunks(f.text, count, 360)][:40]
    model, scored_ids = ev.source_figures(scorer, docs)
    train_ids = tok([f.text for f in files if not stdlib_corpus.is_heldout(f.module)],
                    add_special_tokens=False)["input_ids"]
    unigram = ev.unigram_figures(train_ids, len(tok), scored_ids, model["bytes"])
    assert model["tokens"] == unigram["tokens"] > 5000
    # the unigram of this tokenizer is about 6.5 nats/token; an untrained model about 9
    assert model["nll_token_mean"] < unigram["nll_token_mean"] - 1.0, (model, unigram)
    assert model["bits_per_byte"] < unigram["bits_per_byte"]


def test_unigram_figures_hand_computed():
    _, ev = _corpus()
    # train tokens: 0,0,1 over a 3-token vocabulary -> add-one: p(0)=3/6, p(1)=2/6, p(2)=1/6
    got = ev.unigram_figures([[0, 0, 1]], 3, [[0, 2]], nbytes=4)
    nll = -math.log(3 / 6) - math.log(1 / 6)
    assert math.isclose(got["nll"], nll) and got["tokens"] == 2
    assert math.isclose(got["bits_per_byte"], nll / (4 * math.log(2)))


def test_mismatched_partners_is_a_derangement_within_indentation():
    _, ev = _corpus()
    pairs = [{"indent": i} for i in (4, 8, 4, 8, 8, 4, 12)]
    partner = ev.mismatched_partners(pairs, seed=3)
    assert all(j != i for i, j in enumerate(partner))
    assert all(pairs[j]["indent"] == pairs[i]["indent"] for i, j in enumerate(partner[:6]))
    assert sorted(partner[:6]) == list(range(6))


@pytest.mark.slow
@needs_model
def test_cli_score_without_model_prints_token_logprobs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "loglik", "score",
                          str(ROOT / "examples" / "pairs.jsonl")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(x) for x in out.stdout.splitlines()]
    assert rows
    for r in rows:
        assert r["num_tokens"] == len(r["token_logprobs"]) > 0
        assert all(-30 < lp <= 0 for lp in r["token_logprobs"])
        assert math.isclose(r["logprob"], math.fsum(r["token_logprobs"]), abs_tol=1e-6)


@needs_model
def test_explain_and_compare_without_model(tiny_model_dir, tmp_path, capsys):
    from loglik.cli import main

    pairs = str(ROOT / "examples" / "pairs.jsonl")
    assert main(["explain", "def add(a, b):\n", '    """Return the sum."""', "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["tokens"]
    assert rows and math.isclose(rows[-1]["cumulative"], math.fsum(r["logprob"] for r in rows),
                                 abs_tol=1e-6)

    assert main(["compare", pairs, "--json"]) == 0          # the default model alone
    alone = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in alone["models"]] == ["default_model"] and alone["pairs"] == []

    assert main(["compare", pairs, "--model", tiny_model_dir, "--json",
                 "--num-bootstrap", "100"]) == 0            # against the default model
    two = json.loads(capsys.readouterr().out)
    assert len(two["models"]) == 2 and two["pairs"][0]["basis"] == "text"

    assert main(["compare", pairs, "--plot", str(tmp_path / "p.png")]) == 2
    assert "--plot draws the differences between two models" in capsys.readouterr().err
