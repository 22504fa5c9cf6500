"""One tool over several workloads in this process, on a GPU (or the CPU for the dry run).

    python bench/gpu_worker.py TOOL MODEL_DIR OUT.json --workloads a.json,b.json \
        [--device cuda] [--dtype bfloat16] [--limit N]

TOOL: loglik (Scorer.from_pretrained), loglik-varlen (the HF backend with packed rows through
the varlen attention path forced on), lmeval (lm-evaluation-harness HFLM, batch "auto"),
loop (batch 1, full logits, log_softmax: the plain loop), vllm (vLLM's ``prompt_logprobs``,
prefix caching off as vLLM does for prompt log-probs). Model loading and the first call are
outside the timing; a tiny warm-up request runs first so that CUDA kernels are loaded.
OUT.json: ``{workload name: {seconds, logprobs, peak_mem_mb, requests}}``, where
peak_mem_mb is ``torch.cuda.max_memory_allocated`` of that workload (reserved for vLLM),
or the process's peak RSS on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")   # one process: its memory is ours


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def _peak_mb(device: str, reserved: bool = False) -> float:
    import torch

    if device.startswith("cuda"):
        stat = torch.cuda.max_memory_reserved if reserved else torch.cuda.max_memory_allocated
        return stat() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loglik_tool(model: str, args, *, varlen: bool | None = None):
    """A function records -> log-probs, through loglik's Scorer."""
    from loglik import Scorer

    if varlen is None:
        scorer = Scorer.from_pretrained(model, device=args.device, dtype=args.dtype,
                                        batch_tokens=args.batch_tokens)
    else:
        from loglik.backends.hf import HFBackend, load_hf

        hf, tok = load_hf(model, device=args.device, dtype=args.dtype)
        scorer = Scorer(HFBackend(hf, varlen=varlen), tok, batch_tokens=args.batch_tokens)
        print(f"loglik-varlen: varlen={scorer.backend.varlen}", file=sys.stderr)
    return lambda recs: [s.logprob for s in scorer.score_many(
        [(r["prompt"], r["response"]) for r in recs])]


def lmeval_tool(model: str, args):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, backend="causal", batch_size=args.batch, device=args.device,
              dtype=args.dtype, max_length=args.max_length, max_batch_size=args.max_batch)

    def run(recs):
        reqs = [Instance(request_type="loglikelihood", doc={}, idx=i,
                         arguments=(r["prompt"], r["response"])) for i, r in enumerate(recs)]
        return [float(lp) for lp, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    return run


def loop_tool(model: str, args):
    import torch
    from transformers import AutoModelForCausalLM

    from loglik.backends.hf import resolve_dtype

    lm = AutoModelForCausalLM.from_pretrained(model, dtype=resolve_dtype(args.dtype))
    lm = lm.to(args.device).eval()

    def run(recs):
        out = []
        with torch.inference_mode():
            for r in recs:      # batch 1: the plain loop everyone writes first
                ids = torch.tensor([r["context_ids"] + r["response_ids"]], device=args.device)
                logp = torch.log_softmax(lm(ids).logits[0, :-1].float(), dim=-1)
                c = len(r["context_ids"])
                tgt = torch.tensor(r["response_ids"], device=args.device)
                out.append(logp[c - 1:].gather(-1, tgt.unsqueeze(-1)).sum().item())
        return out
    return run


def vllm_tool(model: str, args):
    """vLLM's prompt log-probs: one prompt = context + response ids, summed over the response.

    vLLM turns prefix caching off for requests with prompt log-probs, so shared contexts are
    computed once per request; ``enforce_eager`` skips its compile and graph capture (start-up
    time) unless --vllm-compile."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=model, dtype=args.dtype, max_model_len=4096, skip_tokenizer_init=True,
              enable_prefix_caching=False, gpu_memory_utilization=args.vllm_memory,
              enforce_eager=not args.vllm_compile, seed=0)
    params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)

    def run(recs):
        prompts = [TokensPrompt(prompt_token_ids=r["context_ids"] + r["response_ids"])
                   for r in recs]
        outs = llm.generate(prompts, params, use_tqdm=False)
        res = []
        for r, o in zip(recs, outs):
            ids, c = r["context_ids"] + r["response_ids"], len(r["context_ids"])
            res.append(sum(o.prompt_logprobs[i][ids[i]].logprob for i in range(c, len(ids))))
        return res
    return run


TOOLS = {"loglik": loglik_tool, "loglik-varlen": lambda m, a: loglik_tool(m, a, varlen=True),
         "lmeval": lmeval_tool, "loop": loop_tool, "vllm": vllm_tool}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tool", choices=sorted(TOOLS))
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--workloads", required=True, help="comma-separated workload .json files")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--limit", type=int, default=None, help="only the first N records of each")
    p.add_argument("--batch", default="auto", help="lmeval: batch size (default auto)")
    p.add_argument("--max-batch", type=int, default=64, help="lmeval: largest auto batch")
    p.add_argument("--max-length", type=int, default=4096,
                   help="lmeval: context length (its auto batch search forwards batches of it)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="loglik: token budget per forward (default: the library's)")
    p.add_argument("--vllm-memory", type=float, default=0.85)
    p.add_argument("--vllm-compile", action="store_true")
    args = p.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    run = TOOLS[args.tool](args.model, args)
    first = json.loads(Path(args.workloads.split(",")[0]).read_text())[:1]
    run(first)                                                   # warm-up: kernels, caches
    results = {}
    for path in args.workloads.split(","):
        records = json.loads(Path(path).read_text())[:args.limit]
        _sync(args.device)
        _reset_peak(args.device)
        t = time.perf_counter()
        logprobs = run(records)
        _sync(args.device)
        seconds = time.perf_counter() - t
        results[Path(path).stem.rsplit("-", 1)[0]] = {
            "seconds": seconds, "logprobs": logprobs, "requests": len(records),
            "peak_mem_mb": _peak_mb(args.device, reserved=args.tool == "vllm")}
        print(f"{args.tool} {path}: {seconds:.2f}s", file=sys.stderr)
    Path(args.out).write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
