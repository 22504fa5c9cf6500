"""lm-evaluation-harness on loglik: the model "loglik" against lm-eval's own "hf" model.

Four local tasks (YAML + JSONL written here, no hub): multiple choice with multi-token
choices, loglikelihood with merging boundaries, loglikelihood_rolling over several windows,
and a short generate_until. Both models run through ``lm_eval.simple_evaluate`` on the same
tiny model folder; per-sample log-likelihoods must agree within 1e-4 where both tokenize
the boundary the same way, and the task metrics must be equal.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed: pip install "
                              "'loglik[lmeval]'")

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
TOL = 1e-4
MAX_LENGTH = 32          # small, so rolling documents span several windows

MC = [
    {"q": "The capital of France is", "choices": ["Paris.", "Rome.", "the lazy dog."],
     "label": 0},
    {"q": "The quick brown fox", "choices": ["jumps over the lazy dog.", "sleeps.",
                                             "is the answer."], "label": 0},
    {"q": "Question: what is the answer?", "choices": ["forty-two", "Paris", "coffee"],
     "label": 0},
    {"q": "In 1998, 12,345 people visited the", "choices": ["museum", "dog", "capital of Italy"],
     "label": 0},
    {"q": "She said: \"Hello,", "choices": ["world!\"", "Goodbye...\"", "Rome\""], "label": 0},
]
# target_delimiter "" so the pairs are exactly these: some merge across the boundary.
LL = [
    {"context": "The capital of Italy is", "continuation": " Rome."},
    {"context": "The dog sleep", "continuation": "s."},
    {"context": "The capital of Fr", "continuation": "ance is great."},
    {"context": "The qu", "continuation": "ick brown fox"},
    {"context": "Machine learning models compute", "continuation": " probabilities of tokens"},
    {"context": "def add(a, b):\n   ", "continuation": " return a + b"},
]
ROLL = [
    {"text": "The quick brown fox jumps over the lazy dog. The dog sleeps."},
    {"text": "The capital of France is Paris. The capital of Italy is Rome. Machine learning "
             "models compute probabilities of tokens given a context."},
    {"text": "Pizza and coffee are great. The log-likelihood of a response is the sum of its "
             "token log-probabilities. In 1998, 12,345 people visited the museum; in 1999, "
             "23,456 did."},
    {"text": "Newlines"},
]
GEN = [{"q": "The capital of France is", "a": "Paris"},
       {"q": "The quick brown fox", "a": "jumps"},
       {"q": "Question: what is the answer?", "a": "forty-two"}]

TASKS = {
    "lt_mc": ("mc.jsonl", MC, """output_type: multiple_choice
doc_to_text: "{{q}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - {metric: acc, aggregation: mean, higher_is_better: true}
  - {metric: acc_norm, aggregation: mean, higher_is_better: true}
"""),
    "lt_ll": ("ll.jsonl", LL, """output_type: loglikelihood
doc_to_text: "{{context}}"
doc_to_target: "{{continuation}}"
target_delimiter: ""
metric_list:
  - {metric: perplexity, aggregation: perplexity, higher_is_better: false}
  - {metric: acc, aggregation: mean, higher_is_better: true}
"""),
    "lt_roll": ("roll.jsonl", ROLL, """output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list:
  - {metric: word_perplexity}
  - {metric: byte_perplexity}
  - {metric: bits_per_byte}
"""),
    "lt_gen": ("gen.jsonl", GEN, """output_type: generate_until
doc_to_text: "{{q}}"
doc_to_target: "{{a}}"
generation_kwargs: {until: [".", "\\n"], max_gen_toks: 6, do_sample: false}
metric_list:
  - {metric: exact_match, aggregation: mean, higher_is_better: true}
"""),
}


def write_tasks(folder) -> str:
    """Task YAMLs over local JSONL files in ``folder``; returns the include path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, rows, body) in TASKS.items():
        path = folder / data
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (folder / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
            f"    test: {path}\ntest_split: test\n{body}")
    return str(folder)


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_tasks(tmp_path_factory.mktemp("lmeval-tasks"))


def evaluate(model, model_args: str, task_dir: str, tasks=tuple(TASKS), **kw):
    from lm_eval.tasks import TaskManager

    import loglik.lmeval  # noqa: F401

    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=list(tasks),
                                   task_manager=TaskManager(include_path=task_dir),
                                   log_samples=True, device="cpu", **kw)


def per_sample(results, task: str) -> dict[int, list]:
    """doc_id -> the filtered responses of one task's samples."""
    return {s["doc_id"]: s["filtered_resps"] for s in results["samples"][task]}


def _runs(model_dir: str, task_dir: str):
    ours = evaluate("loglik", f"pretrained={model_dir},max_length={MAX_LENGTH}", task_dir)
    theirs = evaluate("hf", f"pretrained={model_dir},max_length={MAX_LENGTH}", task_dir,
                      batch_size=8)
    return ours, theirs


@pytest.fixture(scope="module")
def gpt2_runs(tiny_gpt2_dir, task_dir, torch_threads):
    return _runs(tiny_gpt2_dir, task_dir)


@pytest.fixture(scope="module")
def llama_runs(tiny_model_dir, task_dir, torch_threads):
    # lm-eval's hf model cannot run lt_ll with this tokenizer: see test_llama_style_agrees...
    args = f"pretrained={tiny_model_dir},max_length={MAX_LENGTH}"
    tasks = [t for t in TASKS if t != "lt_ll"]
    return (evaluate("loglik", args, task_dir),
            evaluate("hf", args, task_dir, tasks=tasks, batch_size=8))


def _joint(model_dir: str, pairs) -> list[bool]:
    """Which (context, continuation) pairs loglik tokenizes as one joint sequence."""
    from transformers import AutoTokenizer

    from loglik.tokenize import Encoder

    enc = Encoder(AutoTokenizer.from_pretrained(model_dir))
    return [enc.encode(c, r).boundary == "joint" for c, r in pairs]


# -- agreement with lm-eval's hf model ---------------------------------------------------------
def _check_loglikelihood_tasks(ours, theirs, model_dir):
    mc_a, mc_b = per_sample(ours, "lt_mc"), per_sample(theirs, "lt_mc")
    assert sorted(mc_a) == list(range(len(MC)))
    for doc in mc_a:
        joint = _joint(model_dir, [(MC[doc]["q"], " " + c) for c in MC[doc]["choices"]])
        assert len(mc_a[doc]) == len(MC[doc]["choices"])
        for (lp_a, _), (lp_b, _), same in zip(mc_a[doc], mc_b[doc], joint):
            if same:
                assert abs(lp_a - lp_b) <= TOL
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["lt_mc"][metric] == theirs["results"]["lt_mc"][metric]

    ll_a, ll_b = per_sample(ours, "lt_ll"), per_sample(theirs, "lt_ll")
    joint = _joint(model_dir, [(r["context"], r["continuation"]) for r in LL])
    assert not all(joint), "the loglikelihood task must hold merging boundaries"
    for doc, same in enumerate(joint):
        if same:
            assert abs(ll_a[doc][0][0] - ll_b[doc][0][0]) <= TOL
            assert ll_a[doc][0][1] == ll_b[doc][0][1]                # is_greedy
    return joint


@pytest.mark.slow
def test_gpt2_style_agrees_with_hf(gpt2_runs, tiny_gpt2_dir):
    ours, theirs = gpt2_runs
    _check_loglikelihood_tasks(ours, theirs, tiny_gpt2_dir)
    # Rolling: the same windows (lm-eval's rule at 32 tokens), the same numbers.
    roll_a, roll_b = per_sample(ours, "lt_roll"), per_sample(theirs, "lt_roll")
    for doc in roll_a:
        assert abs(roll_a[doc][0] - roll_b[doc][0]) <= TOL
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["lt_roll"][metric] == pytest.approx(
            theirs["results"]["lt_roll"][metric], rel=1e-5)
    # Greedy generation: the same strings, the same exact_match.
    assert per_sample(ours, "lt_gen") == per_sample(theirs, "lt_gen")
    assert (ours["results"]["lt_gen"]["exact_match,none"]
            == theirs["results"]["lt_gen"]["exact_match,none"])


def test_rolling_spans_several_windows(tiny_gpt2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    lengths = [len(tok(r["text"])["input_ids"]) for r in ROLL]
    assert max(lengths) > 2 * MAX_LENGTH and min(lengths) < MAX_LENGTH


@pytest.mark.slow
def test_llama_style_agrees_with_hf(llama_runs, tiny_model_dir, task_dir):
    """A tokenizer that adds BOS: the same BOS-prefixed contexts, the same numbers; rolling
    differs by what lm-eval's hf scores and loglik does not (BOS after the BOS prefix)."""
    ours, theirs = llama_runs
    mc_a, mc_b = per_sample(ours, "lt_mc"), per_sample(theirs, "lt_mc")
    for doc in mc_a:                           # every choice joins its context here
        for (lp_a, _), (lp_b, _) in zip(mc_a[doc], mc_b[doc]):
            assert abs(lp_a - lp_b) <= TOL
    assert ours["results"]["lt_mc"]["acc,none"] == theirs["results"]["lt_mc"]["acc,none"]
    # The merging boundaries of lt_ll: loglik scores them (split fallback, exact: see
    # test_split_boundaries_are_exact_and_counted); lm-eval's hf model stops on an assert
    # (an empty continuation slice: lm-eval issues #1297, #1053, #3336).
    assert len(per_sample(ours, "lt_ll")) == len(LL)
    with pytest.raises(AssertionError):
        evaluate("hf", f"pretrained={tiny_model_dir}", task_dir, tasks=["lt_ll"], batch_size=8)
    assert per_sample(ours, "lt_gen") == per_sample(theirs, "lt_gen")
    # A document that fits one window: hf's tokens start with the BOS its tokenizer adds and
    # follow the BOS prefix, so it scores BOS after BOS and the text after two BOS;
    # loglik scores the text after one BOS.
    from loglik import Scorer
    from loglik.types import Request

    scorer = Scorer.from_pretrained(tiny_model_dir)
    bos = scorer.encoder.tok.bos_token_id
    text = tuple(scorer.encoder.tok.encode_batch([ROLL[-1]["text"]])[0])
    as_hf, as_loglik = scorer.run_requests([Request((bos,), (bos, *text)),
                                            Request((bos,), text)])
    roll_a, roll_b = per_sample(ours, "lt_roll"), per_sample(theirs, "lt_roll")
    short = len(ROLL) - 1
    assert abs(roll_b[short][0] - math.fsum(as_hf.logprobs)) <= TOL
    assert abs(roll_a[short][0] - math.fsum(as_loglik.logprobs)) <= TOL


def test_split_boundaries_are_exact_and_counted(tiny_model_dir, task_dir, torch_threads):
    """Pairs that merge across the boundary: loglik scores the exact continuation text
    (float64 reference over the split tokens) and the LM counts them."""
    import torch

    from loglik.lmeval import LoglikLM
    from loglik.logprobs import reference_logprobs

    lm = LoglikLM(pretrained=tiny_model_dir)
    out = evaluate(lm, None, task_dir, tasks=["lt_ll"])
    joint = _joint(tiny_model_dir, [(r["context"], r["continuation"]) for r in LL])
    assert lm.boundary_fallbacks == joint.count(False) > 0
    got = per_sample(out, "lt_ll")
    model = lm.scorer.backend.model
    for doc, row in enumerate(LL):
        enc = lm.scorer.encode(row["context"], row["continuation"])
        ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])     # (1, T)
        with torch.no_grad():
            ref = reference_logprobs(model(input_ids=ids).logits, ids)[0]       # (T-1,)
        expected = math.fsum(ref[len(enc.context_ids) - 1:].tolist())
        assert abs(got[doc][0][0] - expected) <= TOL


def test_hf_depends_on_neighbours_loglik_is_exact(tiny_gpt2_dir, torch_threads):
    """Found while writing these tests: lm-eval's hf model scores a request differently when
    the same run holds another whose context + continuation are the same tokens with the
    boundary elsewhere (it computes such a group once). loglik matches the float64
    reference alone and together."""
    import torch
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from loglik.lmeval import LoglikLM
    from loglik.logprobs import reference_logprobs

    pairs = [("The capital of France is", " Paris."), ("The capital of Fr", "ance is Paris.")]
    ours = LoglikLM(pretrained=tiny_gpt2_dir)
    theirs = HFLM(pretrained=tiny_gpt2_dir, batch_size=8, device="cpu")

    def run(lm, ps):
        return [lp for lp, _ in lm.loglikelihood(
            [Instance("loglikelihood", {}, p, i) for i, p in enumerate(ps)], disable_tqdm=True)]

    enc = ours.scorer.encode(*pairs[0])
    ids = torch.tensor([list(enc.context_ids) + list(enc.response_ids)])        # (1, T)
    with torch.no_grad():
        ref = reference_logprobs(ours.scorer.backend.model(input_ids=ids).logits, ids)[0]
    expected = math.fsum(ref[len(enc.context_ids) - 1:].tolist())
    assert abs(run(ours, pairs[:1])[0] - expected) <= TOL
    assert abs(run(ours, pairs)[0] - expected) <= TOL
    assert abs(run(theirs, pairs[:1])[0] - expected) <= TOL
    assert abs(run(theirs, pairs)[0] - expected) > 0.1       # lm-eval 0.4.13's hf model


# -- the model object ----------------------------------------------------------------------------
@pytest.mark.slow
def test_gguf_file_and_server_give_the_hf_backends_numbers(tiny_llama, sp_tokenizer,
                                                          tiny_model_dir, task_dir, tmp_path):
    """"Works with every loglik backend": the same tasks through ``model="loglik"`` on the
    tiny Llama's folder, on a GGUF file of it (llama.cpp) and through ``loglik serve`` on
    loopback (the openai backend): every per-sample log-likelihood within the GGUF
    backend's 1e-3 and the server's 1e-4 of the folder's, the same metrics."""
    pytest.importorskip("llama_cpp", reason="pip install 'loglik[llamacpp]'")
    pytest.importorskip("uvicorn", reason="pip install 'loglik[serve]'")
    from loglik import Scorer
    from loglik.lmeval import LoglikLM
    from loglik.serve import BackgroundServer, create_app
    from loglik.testing_gguf import write_gguf

    tasks = ["lt_mc", "lt_ll", "lt_roll"]
    gguf = tmp_path / "tiny.gguf"
    write_gguf(tiny_llama, sp_tokenizer, gguf)
    want = evaluate("loglik", f"pretrained={tiny_model_dir},max_length={MAX_LENGTH}", task_dir,
                    tasks=tasks)
    runs = {"gguf": (evaluate("loglik", f"pretrained={gguf},max_length={MAX_LENGTH}",
                              task_dir, tasks=tasks), 1e-3)}
    with BackgroundServer(create_app(Scorer.from_hf(tiny_llama, sp_tokenizer),
                                     model_name="tiny")) as srv:
        lm = LoglikLM(Scorer.from_server(srv.url + "/v1", tokenizer=sp_tokenizer),
                      max_length=MAX_LENGTH)
        runs["server"] = (evaluate(lm, None, task_dir, tasks=tasks), TOL)
    for name, (got, tol) in runs.items():
        for task in tasks:
            a, b = per_sample(got, task), per_sample(want, task)
            assert sorted(a) == sorted(b) and a, (name, task)
            for doc in b:
                for x, y in zip(a[doc], b[doc]):
                    lp_x, lp_y = (x[0], y[0]) if isinstance(x, (list, tuple)) else (x, y)
                    assert abs(lp_x - lp_y) <= tol, (name, task, doc, lp_x, lp_y)
            metrics = {k: v for k, v in want["results"][task].items() if "stderr" not in k}
            for k, v in metrics.items():
                if isinstance(v, float) and "perplexity" not in k and "bits" not in k:
                    assert got["results"][task][k] == v, (name, task, k)


def test_wraps_an_existing_scorer_and_strided_rolling(llama_scorer, task_dir):
    from loglik.lmeval import LoglikLM

    lm = LoglikLM(llama_scorer, stride=16, max_length=MAX_LENGTH)
    out = evaluate(lm, None, task_dir, tasks=["lt_roll"])
    got = per_sample(out, "lt_roll")
    for doc, row in enumerate(ROLL):
        want = llama_scorer.score_text(row["text"], stride=16, max_length=MAX_LENGTH).logprob
        assert got[doc][0] == pytest.approx(want, abs=TOL)


def test_any_backend_hand_computed():
    """The fake backend (no model, no torch): the seed example through lm-eval's request
    objects, -0.7 + -0.4 = -1.1; generation needs a model and says so."""
    from lm_eval.api.instance import Instance

    from loglik import Scorer
    from loglik.backends.fake import FakeBackend, WordTokenizer
    from loglik.errors import ConfigError
    from loglik.lmeval import LoglikLM

    tok = WordTokenizer(["the", "cat", "sat", "dog"])
    the, cat, sat = tok.ids("the cat sat")
    bos = tok.bos_token_id
    backend = FakeBackend(len(tok), {(bos, the): {cat: math.exp(-0.7)},
                                     (bos, the, cat): {sat: math.exp(-0.4)}}, max_length=16)
    lm = LoglikLM(Scorer(backend, tok))
    reqs = [Instance("loglikelihood", {}, ("the ", "cat sat"), 0),
            Instance("loglikelihood", {}, ("the", " cat sat"), 1)]
    out = lm.loglikelihood(reqs)
    assert [lp for lp, _ in out] == [pytest.approx(-1.1, abs=1e-12)] * 2
    assert [greedy for _, greedy in out] == [True, True]
    with pytest.raises(ConfigError, match="generate_until tasks need"):
        lm.generate_until([Instance("generate_until", {}, ("the", {"until": ["."]}), 0)])


def test_lm_eval_windows_by_hand():
    from loglik.lmeval import lm_eval_windows

    reqs = lm_eval_windows([1, 2, 3, 4, 5, 6, 7], prefix=0, max_length=3)
    assert [(r.context_ids, r.target_ids) for r in reqs] == [
        ((0,), (1, 2, 3)), ((3,), (4, 5, 6)), ((4, 5, 6), (7,))]
    scored = [t for r in reqs for t in r.target_ids]
    assert scored == [1, 2, 3, 4, 5, 6, 7]                        # each token once


def test_bad_model_args_say_what_to_do(llama_scorer):
    from loglik.errors import ConfigError
    from loglik.lmeval import LoglikLM

    with pytest.raises(ConfigError, match="exactly one"):
        LoglikLM()
    with pytest.raises(ConfigError, match="unknown loglik model_args.*batchtokens"):
        LoglikLM(llama_scorer, batchtokens=5)


def test_registered_next_to_lm_evals_own_models():
    from lm_eval.api.registry import get_model

    from loglik.lmeval import LoglikLM

    assert get_model("loglik") is LoglikLM
    assert get_model("hf").__name__ == "HFLM"


@pytest.mark.slow
def test_lm_eval_has_no_model_plugin_discovery():
    """What the README says of ``lm_eval --model loglik``: lm-eval (0.4.13) finds models only
    in its own MODEL_MAPPING and in what the process registered, never through installed
    packages' entry points, so "loglik" exists only after ``import loglik.lmeval``. When a
    later lm-eval discovers plugins, this fails: then declare the entry point it reads."""
    look_up = ("from lm_eval.api.registry import get_model\n"
               "try:\n    print(get_model('loglik').__module__)\n"
               "except ValueError as exc:\n    print('missing:', str(exc)[:60])\n")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
    out = [subprocess.run([sys.executable, "-c", pre + look_up], capture_output=True,
                          text=True, env=env, timeout=600, check=True).stdout.strip()
           for pre in ("", "import loglik.lmeval\n")]
    assert out == ["missing: Attempted to load model 'loglik', but no model for this name",
                   "loglik.lmeval"]


def test_chat_template_applies(tiny_model_dir, task_dir, tmp_path):
    """--apply_chat_template: the tokenizer's template turns the prompt into a conversation."""
    from transformers import AutoTokenizer

    from loglik import Scorer
    from loglik.lmeval import LoglikLM

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n"
                         "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")
    scorer = Scorer.from_pretrained(tiny_model_dir)
    scorer.tokenizer.hf.chat_template = tok.chat_template
    lm = LoglikLM(scorer)
    out = evaluate(lm, None, task_dir, tasks=["lt_mc"], apply_chat_template=True)
    sample = out["samples"]["lt_mc"][0]
    context = sample["arguments"][0][0]
    assert context == "user: The capital of France is\nassistant:"
    continuation = sample["arguments"][0][1]
    want = scorer.score(context, continuation).logprob
    assert sample["filtered_resps"][0][0] == pytest.approx(want, abs=TOL)


# -- compare-runs ----------------------------------------------------------------------------------
def _write_run(folder, task: str, rows: list[dict]) -> None:
    sub = folder / "model"
    sub.mkdir(parents=True)
    with open(sub / f"samples_{task}_2026-01-01T00-00-00.000001.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def test_compare_runs_by_hand(tmp_path):
    from loglik.evalruns import compare_runs

    a = [{"doc_id": i, "filter": "none", "metrics": ["acc"], "acc": v, "target": "0",
          "filtered_resps": [[str(-1.0 - i), "False"], ["-5.0", "False"]],
          "arguments": {"gen_args_0": {"arg_0": f"question {i}", "arg_1": " x"}}}
         for i, v in enumerate([1, 1, 0, 1])]
    b = [dict(r, acc=v, filtered_resps=[[str(-2.0 - r["doc_id"]), "False"], ["-5.0", "False"]])
         for r, v in zip(a, [0, 1, 0, 0])]
    _write_run(tmp_path / "a", "t", a)
    _write_run(tmp_path / "b", "t", b)
    c = compare_runs(str(tmp_path / "a"), str(tmp_path / "b"), num_bootstrap=2000, top=2)
    acc = next(m for m in c.metrics if m.metric == "acc")
    assert (acc.mean_a, acc.mean_b, acc.diff_mean) == (0.75, 0.25, 0.5)
    assert (acc.win_rate_a, acc.win_rate_b, acc.tie_rate) == (0.5, 0.0, 0.5)
    assert 0.0 <= acc.ci_low <= 0.5 <= acc.ci_high <= 1.0
    assert [e["doc_id"] for e in acc.largest] == [0, 3]
    gold = next(m for m in c.metrics if m.metric == "logprob_gold")
    assert gold.diff_mean == 1.0 and gold.ci_low == gold.ci_high == 1.0
    assert gold.largest[0]["doc"] == "question 0"


def test_compare_runs_errors_name_the_fix(tmp_path):
    from loglik.errors import ConfigError
    from loglik.evalruns import compare_runs

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="--log_samples"):
        compare_runs(str(tmp_path / "empty"), str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="not a folder"):
        compare_runs(str(tmp_path / "nope"), str(tmp_path / "empty"))
    row = {"doc_id": 0, "metrics": ["acc"], "acc": 1, "doc_hash": "x"}
    _write_run(tmp_path / "a", "t", [row])
    _write_run(tmp_path / "b", "t", [dict(row, doc_hash="y")])
    with pytest.raises(ConfigError, match="different documents"):
        compare_runs(str(tmp_path / "a"), str(tmp_path / "b"))


def test_compare_lm_eval_samples_is_compare_runs(tmp_path, capsys):
    from loglik.cli import main

    rows = [{"doc_id": i, "metrics": ["acc"], "acc": v} for i, v in enumerate([1, 0, 1])]
    _write_run(tmp_path / "a", "t", rows)
    _write_run(tmp_path / "b", "t", [dict(r, acc=1) for r in rows])
    runs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert main(["compare-runs", *runs, "--json", "--num-bootstrap", "500"]) == 0
    expected = json.loads(capsys.readouterr().out)
    assert main(["compare", "--lm-eval-samples", *runs, "--json", "--num-bootstrap", "500",
                 "--top", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == expected
    assert expected["metrics"][0]["diff_mean"] == pytest.approx(-1 / 3)
    assert main(["compare", "data.jsonl", "--lm-eval-samples", *runs]) == 2
    assert "drop DATA" in capsys.readouterr().err
    assert main(["compare"]) == 2
    assert "--lm-eval-samples" in capsys.readouterr().err


def test_eval_argv_passes_lm_eval_flags_through():
    from loglik.cli import build_parser
    from loglik.cli.eval import lm_eval_argv

    args = build_parser().parse_args(["eval", "--model", "m", "--tasks", "a,b", "--limit", "3",
                                      "--log_samples", "--batch-tokens", "512"])
    assert args.lm_eval_args == ["--tasks", "a,b", "--limit", "3", "--log_samples"]
    assert lm_eval_argv(args.model, args.lm_eval_args, args.batch_tokens) == [
        "run", "--model", "loglik", "--model_args", "pretrained=m,batch_tokens=512",
        "--tasks", "a,b", "--limit", "3", "--log_samples"]


# -- the CLI, end to end ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.timeout(2400)     # three CLI processes; minutes each on a loaded 2-core machine
def test_cli_eval_then_compare_runs(tiny_model_dir, task_dir, tmp_path):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    common = ["--include_path", task_dir, "--log_samples", "--device", "cpu"]
    ours = subprocess.run([sys.executable, "-m", "loglik", "eval", "--model", tiny_model_dir,
                           "--tasks", "lt_mc,lt_ll", *common, "--output_path", str(tmp_path / "a")],
                          capture_output=True, text=True, env=env, timeout=900)
    assert ours.returncode == 0, ours.stderr[-2000:]
    assert "lt_mc" in ours.stdout and "acc" in ours.stdout
    theirs = subprocess.run([sys.executable, "-m", "lm_eval", "run", "--model", "hf",
                             "--model_args", f"pretrained={tiny_model_dir}", "--tasks",
                             "lt_mc", *common, "--output_path", str(tmp_path / "b")],
                            capture_output=True, text=True, env=env, timeout=900)
    assert theirs.returncode == 0, theirs.stderr[-2000:]
    cmp = subprocess.run([sys.executable, "-m", "loglik", "compare-runs", str(tmp_path / "a"),
                          str(tmp_path / "b"), "--json"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert cmp.returncode == 0, cmp.stderr[-2000:]
    out = json.loads(cmp.stdout)
    by = {(m["task"], m["metric"]): m for m in out["metrics"]}
    assert by[("lt_mc", "acc")]["diff_mean"] == 0 and by[("lt_mc", "acc")]["tie_rate"] == 1
    assert abs(by[("lt_mc", "logprob_gold")]["diff_mean"]) <= TOL
    assert by[("lt_mc", "logprob_gold")]["num_docs"] == len(MC)
    # hf cannot run lt_ll with this tokenizer (see test_llama_style_agrees_with_hf)
    assert out["tasks_only_in_a"] == ["lt_ll"] and ("lt_ll", "perplexity") not in by
    table = subprocess.run([sys.executable, "-m", "loglik", "compare-runs", str(tmp_path / "a"),
                            str(tmp_path / "b")], capture_output=True, text=True, env=env,
                           timeout=120)
    assert table.returncode == 0 and "paired differences" in table.stdout


def test_pretrained_dtype_follows_the_device(monkeypatch):
    """Unset dtype reaches Scorer.from_pretrained as None (bf16 on CUDA, fp32 on CPU), as
    every other loglik entry point; a given one is passed through."""
    from loglik import Scorer
    from loglik.lmeval import LoglikLM

    seen = []

    def fake(model, **kw):
        seen.append(kw)
        raise RuntimeError("stop")

    monkeypatch.setattr(Scorer, "from_pretrained", staticmethod(fake))
    for args in ({}, {"dtype": "float16"}):
        with pytest.raises(RuntimeError, match="stop"):
            LoglikLM(pretrained="some/model", device="cpu", **args)
    assert [k["dtype"] for k in seen] == [None, "float16"]
