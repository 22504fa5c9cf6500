"""A deliberately wrong completions server, a few lines over a real model (for the tests).

``flaw`` is one of: ``none`` (correct), ``shifted`` (each token's value read at its own
position: the shift forgotten), ``top_k`` (log-softmax normalised over the top 20 logits only),
``temperature`` (log-softmax of logits / 2), ``drop_first`` (the first echoed token missing).
"""

from __future__ import annotations

import torch
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def wrong_app(model, flaw: str, name: str = "tiny"):
    def logprobs(ids: list[int]) -> torch.Tensor:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()           # (T, V)
        if flaw == "temperature":
            logits = logits / 2.0
        if flaw == "top_k":
            return logits - logits.topk(20, dim=-1).values.logsumexp(-1, keepdim=True)
        return logits.log_softmax(-1)                                        # (T, V)

    def choice(i: int, ids: list[int], k: int) -> dict:
        lp = logprobs(ids)                                                   # (T, V)
        values = [None] + [float(lp[t if flaw == "shifted" else t - 1, ids[t]])
                           for t in range(1, len(ids))]
        tops = [None] + [{f"token_id:{int(j)}": float(v) for v, j in zip(*lp[t - 1].topk(k))}
                         for t in range(1, len(ids))]
        tokens = [f"token_id:{t}" for t in ids]
        if flaw == "drop_first":
            tokens, values, tops = tokens[1:], [None] + values[2:], [None] + tops[2:]
        return {"index": i, "text": "", "finish_reason": "length",
                "logprobs": {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops,
                             "text_offset": list(range(len(tokens)))}}

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        prompts = body["prompt"]
        prompts = [prompts] if isinstance(prompts[0], int) else prompts
        k = max(1, body.get("logprobs") or 1)
        return JSONResponse({"choices": [choice(i, p, k) for i, p in enumerate(prompts)]})

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"data": [{"id": name, "object": "model"}]})

    return Starlette(routes=[Route("/v1/completions", completions, methods=["POST"]),
                             Route("/v1/models", models)])
