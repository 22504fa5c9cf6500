"""Throughput of ``loglik score --ray`` with 1 and 2 actors, and the per-actor start-up.

    python bench/ray_scale.py [--records 20000] [--actors 1 2]

Scores a generated shard of short pairs with a tiny random GPT-2 (hidden 32, 2 layers) on a
local Ray, once per actor count (a fresh Ray each time), and prints one JSON line per run:
records/s overall and from the first actor ready (steady), start-up seconds (each actor's
process started and model loaded), and the single-process rate on the same data.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=20000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from loglik import Scorer, read_examples
    from loglik.distributed import score_on_ray
    from loglik.testing import byte_bpe_tokenizer, tiny_model

    work = tempfile.mkdtemp(prefix="loglik-ray-bench-")
    tok = byte_bpe_tokenizer()
    model_dir = os.path.join(work, "model")
    tiny_model("gpt2", len(tok), scale=10.0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    words = "the quick brown fox jumps over the lazy dog and the cat sat on a mat".split()
    data = os.path.join(work, "data")
    os.makedirs(data)
    per = args.records // args.shards
    for s in range(args.shards):
        with open(os.path.join(data, f"part-{s}.jsonl"), "w") as f:
            for i in range(s * per, (s + 1) * per):
                f.write(json.dumps({"id": i, "prompt": " ".join(words[i % 7:i % 7 + 4]) + " ",
                                    "response": words[(i * 3) % 9]}) + "\n")
    torch.set_num_threads(1)
    scorer = Scorer.from_pretrained(model_dir)
    t = time.monotonic()
    n = sum(1 for _ in scorer.iter_scores(read_examples(data)))
    single = n / (time.monotonic() - t)
    print(json.dumps({"run": "single process, 1 thread", "records": n,
                      "records_per_s": round(single, 1)}), flush=True)
    for k in args.actors:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        run = score_on_ray(data, os.path.join(work, f"out-{k}"), scorer=model_dir,
                           num_actors=k)
        ray.shutdown()
        print(json.dumps({"run": f"ray, {k} actor(s)", "records": run.records,
                          "seconds": round(run.seconds, 1),
                          "actors_that_scored": len(run.actors_ready_s),
                          "startup_s": round(run.startup_s, 1),
                          "actor_ready_s": sorted(round(v, 1) for v in run.actors_ready_s.values()),
                          "records_per_s": round(run.records_per_s, 1),
                          "steady_records_per_s": round(run.steady_records_per_s, 1),
                          "actor_cpus": run.actor_cpus}), flush=True)


if __name__ == "__main__":
    main()
