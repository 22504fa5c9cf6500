"""Run one tool on one workload in this process and write what it computed and how fast.

    python bench/worker.py TOOL MODEL_DIR WORKLOAD.json OUT.json [--threads 2] [--batch 8]

TOOL: loglik, lmeval (lm-evaluation-harness HFLM; --batch 8 or auto), minicons, naive,
gguf (loglik's llama.cpp backend on MODEL_DIR/model-{--gguf}.gguf), echo (llama-cpp-python's
create_completion(echo=True, logprobs=1) with logits_all=True on the same file).
The output holds per-request log-probs (nats), the scoring time (model loading excluded),
and this process's peak RSS (model loading included).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def run_loglik(model, records, args):
    from loglik import Scorer

    scorer = Scorer.from_pretrained(model, dtype=args.dtype, batch_tokens=args.batch_tokens)
    pairs = [(r["prompt"], r["response"]) for r in records]
    t = time.perf_counter()
    scores = scorer.score_many(pairs)
    seconds = time.perf_counter() - t
    plan = scorer.last_plan
    info = {"padding_waste": plan.padding_waste,
            "sharing_saved": getattr(plan, "sharing_saved", 0.0)} if plan is not None else {}
    return [s.logprob for s in scores], seconds, info


def run_lmeval(model, records, args):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    batch = args.batch if args.batch == "auto" else int(args.batch)
    lm = HFLM(pretrained=model, backend="causal", batch_size=batch, device="cpu",
              dtype="float32", max_length=4096)
    reqs = [Instance(request_type="loglikelihood", doc={}, idx=i,
                     arguments=(r["prompt"], r["response"])) for i, r in enumerate(records)]
    t = time.perf_counter()
    out = lm.loglikelihood(reqs, disable_tqdm=True)
    seconds = time.perf_counter() - t
    return [float(lp) for lp, _ in out], seconds, {}


def run_minicons(model, records, args):
    from minicons import scorer

    lm = scorer.IncrementalLMScorer(model, device="cpu")
    b = int(args.batch)
    out: list[float] = []
    t = time.perf_counter()
    for s in range(0, len(records), b):
        chunk = records[s:s + b]
        out += lm.conditional_score([r["prompt"] for r in chunk],
                                    [r["response"].lstrip(" ") for r in chunk],
                                    reduction=lambda x: x.sum(0).item())
    seconds = time.perf_counter() - t
    return out, seconds, {}


def run_naive(model, records, args):
    import torch
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32).eval()
    out = []
    t = time.perf_counter()
    with torch.inference_mode():
        for r in records:       # batch 1: the plain loop everyone writes first
            ids = torch.tensor([r["context_ids"] + r["response_ids"]])
            logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), dim=-1)
            c = len(r["context_ids"])
            tgt = torch.tensor(r["response_ids"])
            out.append(logp[c - 1:].gather(-1, tgt.unsqueeze(-1)).sum().item())
    return out, time.perf_counter() - t, {}


def run_gguf(model, records, args):
    """loglik's llama.cpp backend on the model's GGUF file; token ids from the HF tokenizer."""
    from transformers import AutoTokenizer

    from loglik import Scorer
    from loglik.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend.from_file(os.path.join(model, f"model-{args.gguf}.gguf"),
                                        threads=args.threads)
    scorer = Scorer(backend, AutoTokenizer.from_pretrained(model),
                    batch_tokens=args.batch_tokens)
    pairs = [(r["prompt"], r["response"]) for r in records]
    t = time.perf_counter()
    scores = scorer.score_many(pairs)
    seconds = time.perf_counter() - t
    plan = scorer.last_plan
    return [s.logprob for s in scores], seconds, {
        "padding_waste": plan.padding_waste, "sharing_saved": plan.sharing_saved}


def run_echo(model, records, args):
    """llama-cpp-python's completion path with echo: what lm-eval's gguf model and most
    scripts use. logits_all=True keeps n_ctx x vocab logits. It takes text only (a token-id
    prompt fails with echo), so its tokenize is the bench's word-level tokenizer (the GGUF's
    own vocabulary cannot split "w17 w912").

    Its token_logprobs cannot be summed here: with no BOS in front (the bench's tokenizer
    adds none) entry i is log-softmax(logits at position i)[token i], the distribution that
    predicts token i+1 read at token i (llama-cpp-python #1276, #1983; entry 0 is None).
    The call is timed as users make it, and the response's terms are read from the logits it
    filled (``llm.scores``, the logits_all buffer): row c-1+j predicts response token j.
    ``echo_token_logprobs`` keeps the sums the echo output gives (entries c .. c+n-1, the
    usual reading), to show how far off they are."""
    import llama_cpp
    import numpy as np
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(model)
    llm = llama_cpp.Llama(model_path=os.path.join(model, f"model-{args.gguf}.gguf"),
                          n_ctx=4096, n_batch=512, n_threads=args.threads,
                          n_threads_batch=args.threads, logits_all=True, verbose=False)
    llm.tokenize = lambda text, add_bos=True, special=False: hf(  # noqa: E731
        text.decode("utf-8"), add_special_tokens=False)["input_ids"]
    out, as_echoed = [], []
    t = time.perf_counter()
    for r in records:
        res = llm.create_completion(r["prompt"] + r["response"], max_tokens=1, echo=True,
                                    logprobs=1, temperature=0.0)
        c, n = len(r["context_ids"]), len(r["response_ids"])
        rows = llm.scores[c - 1:c - 1 + n].astype(np.float64)            # (n, V)
        lse = np.log(np.exp(rows - rows.max(-1, keepdims=True)).sum(-1)) + rows.max(-1)
        out.append(float((rows[np.arange(n), r["response_ids"]] - lse).sum()))
        lps = res["choices"][0]["logprobs"]["token_logprobs"]
        as_echoed.append(float(sum(lps[c:c + n])))
    return out, time.perf_counter() - t, {"echo_token_logprobs": as_echoed}


TOOLS = {"loglik": run_loglik, "gguf": run_gguf, "echo": run_echo, "lmeval": run_lmeval,
         "minicons": run_minicons, "naive": run_naive}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("tool", choices=sorted(TOOLS))
    p.add_argument("model")
    p.add_argument("workload")
    p.add_argument("out")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", default="8")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="loglik's token budget (default: the library's, 2048 on CPU)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gguf", default="f32", help="gguf/echo: which file, f32 or q8_0")
    p.add_argument("--limit", type=int, default=None, help="score only the first N records")
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with open(args.workload) as f:
        records = json.load(f)[:args.limit]
    logprobs, seconds, info = TOOLS[args.tool](args.model, records, args)
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # prompt + response tokens of the records scored: tok/s of a --limit run compares with
    # the full runs' (the echo path is too slow for the whole workload)
    tokens = sum(len(r["context_ids"]) + len(r["response_ids"]) for r in records)
    with open(args.out, "w") as f:
        json.dump({"tool": args.tool, "seconds": seconds, "logprobs": logprobs,
                   "records": len(records), "tokens": tokens,
                   "peak_rss_mb": rss_kb / 1024, **info}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
