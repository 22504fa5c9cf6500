"""The differentiable twin of the scorer: the response-only negative log-likelihood.

Maximising ``sum log Pr(y | x)`` over a dataset is minimising the cross-entropy of the
response tokens. :func:`conditional_nll` computes it for a batch built by :func:`collate`
from the scorer's own :class:`~loglik.types.Encoded` records (same BOS, boundary and shift
rules), so ``-conditional_nll(model, batch, reduction="sum")`` equals the sum of the
scorer's ``logprob`` over the batch's examples (fp32: within 1e-4 nats).

Batch format (the Hugging Face convention, so it plugs into ``transformers.Trainer``)::

    input_ids       (B, T)  context + response tokens, right-padded
    attention_mask  (B, T)  1 for real tokens
    labels          (B, T)  the response tokens where they sit, -100 elsewhere
                            (context, BOS, padding); position t predicts labels[t+1]

An encoder-decoder batch (:func:`collate_seq2seq`: T5, BART) has the prompt as
``input_ids`` / ``attention_mask`` (the encoder's input, special tokens included) and the
response as ``decoder_input_ids`` (``[decoder_start] + y[:-1]``), ``decoder_attention_mask``
and ``labels`` (``y``, -100 at padding): there position t predicts ``labels[t]``, no shift.
Its loss is computed from the model's own logits, (B, T, V) at once (no fused head yet).

A packed batch (:func:`loglik.train_packing.collate_packed`: several examples per row,
``position_ids`` restarting per example and ``sequence_ids`` for the block-diagonal mask)
gives the same loss and gradients as the padded one.

Reductions (``reduction=``):

* ``"sum"``: the summed NLL of every response token, in nats.
* ``"token_mean"``: the sum divided by the number of response tokens of the *whole step*.
  With gradient accumulation or several processes, pass ``num_items_in_batch`` = the
  response tokens of all micro-batches of the step; then the gradients of the micro-batch
  losses add up to exactly the gradient of one big batch (dividing each micro-batch by its
  own count does not: that was the bug transformers fixed in 4.46).
* ``"sequence_mean"``: the sum divided by the number of sequences (``num_items_in_batch``
  = sequences of the whole step when accumulating): the mean of ``-log Pr(y | x)``.

The output head runs only on positions that predict a response token, ``chunk_size`` rows at
a time, with fp32 logsumexp; for a plain linear head (every HF causal LM without a logit
transform) the gradient is computed in the same pass (a fused linear cross-entropy), so
memory is O(chunk x vocab) whatever the sequence length. Plain equivalent::

    F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                    ignore_index=-100, reduction="sum")
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from .backends.hf.adapter import last_hidden, logit_transform
from .errors import ConfigError
from .backends.hf.packed import mask_for_layers
from .logprobs import chunk_rows, shift
from .masks import RowLayout, allowed

IGNORE = -100
Reduction = Literal["sum", "token_mean", "sequence_mean"]
REDUCTIONS = ("sum", "token_mean", "sequence_mean")


def collate(encoded: Sequence[Any], *, pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded training batch from :class:`~loglik.types.Encoded` records.

    Each row reads ``context_ids + response_ids``; ``labels`` holds the response ids at
    their positions and -100 elsewhere, so the loss is exactly the scorer's sum.

    >>> from loglik.types import Encoded
    >>> b = collate([Encoded((1, 5), (6, 7), " x y", "joint"), Encoded((1,), (9,), "z", "joint")])
    >>> b["labels"].tolist()
    [[-100, -100, 6, 7], [-100, 9, -100, -100]]
    """
    rows = [list(e.context_ids) + list(e.response_ids) for e in encoded]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)        # (B, T)
    mask = torch.zeros(len(rows), width, dtype=torch.long)               # (B, T)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)     # (B, T)
    for b, (e, row) in enumerate(zip(encoded, rows)):
        if not e.context_ids:
            raise ConfigError(f"example {b} of the batch has no context token to predict its "
                              "first response token from; encode it with loglik.tokenize.Encoder")
        ids[b, :len(row)] = torch.tensor(row)
        mask[b, :len(row)] = 1
        n = len(e.context_ids)
        labels[b, n:len(row)] = torch.tensor(list(e.response_ids), dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def collate_seq2seq(encoded: Sequence[Any], *, start_id: int,
                    pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded encoder-decoder batch (T5, BART) from the records of
    :class:`loglik.tokenize_seq2seq.Seq2SeqEncoder`: context to the encoder, response to the
    decoder after ``start_id`` (the config's ``decoder_start_token_id``), as
    :class:`loglik.backends.seq2seq.Seq2SeqBackend` scores them.

    >>> from loglik.types import Encoded
    >>> b = collate_seq2seq([Encoded((5, 1), (6, 7), "", "seq2seq"),
    ...                      Encoded((8,), (9,), "", "seq2seq")], start_id=0, pad_id=0)
    >>> b["decoder_input_ids"].tolist(), b["labels"].tolist()
    ([[0, 6], [0, 0]], [[6, 7], [9, -100]])
    """
    width = max(len(e.context_ids) for e in encoded)
    depth = max([len(e.response_ids) for e in encoded] + [1])
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)          # (B, S)
    mask = torch.zeros(len(encoded), width, dtype=torch.long)                 # (B, S)
    dec = torch.full((len(encoded), depth), pad_id, dtype=torch.long)          # (B, T)
    dec_mask = torch.zeros(len(encoded), depth, dtype=torch.long)             # (B, T)
    labels = torch.full((len(encoded), depth), IGNORE, dtype=torch.long)      # (B, T)
    for b, e in enumerate(encoded):
        if not e.context_ids:
            raise ConfigError(f"example {b} of the batch has no encoder input; encode it with "
                              "loglik.tokenize_seq2seq.Seq2SeqEncoder")
        n, y = len(e.response_ids), list(e.response_ids)
        ids[b, :len(e.context_ids)] = torch.tensor(list(e.context_ids))
        mask[b, :len(e.context_ids)] = 1
        dec[b, :max(n, 1)] = torch.tensor([start_id, *y[:-1]])                # start token
        dec_mask[b, :max(n, 1)] = 1     # is real even when the row has nothing to score
        labels[b, :n] = torch.tensor(y, dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
            "decoder_attention_mask": dec_mask, "labels": labels}


def conditional_nll(model: Any, batch: dict[str, torch.Tensor], *,
                    reduction: Reduction = "sum", num_items_in_batch: int | None = None,
                    chunk_size: int | None = None) -> torch.Tensor:
    """Response-only negative log-likelihood of a causal LM on a batch (differentiable).

    Args:
        model: a ``transformers`` causal LM (``AutoModelForCausalLM``).
        batch: ``input_ids``, ``attention_mask``, ``labels`` (see :func:`collate`), (B, T);
            or a packed batch (:func:`loglik.train_packing.collate_packed`: ``position_ids``
            and ``sequence_ids`` instead of ``attention_mask``).
        reduction: ``"sum"``, ``"token_mean"`` or ``"sequence_mean"`` (module docstring).
        num_items_in_batch: the divisor of the means for the whole optimisation step
            (response tokens for ``token_mean``, sequences for ``sequence_mean``); default:
            this batch's own count.
        chunk_size: output-head rows per chunk (default: about 64 MiB of fp32 logits).

    Returns:
        A scalar tensor (fp32): ``-sum log Pr(y | x)`` reduced as asked.

    Example:
        >>> loss = conditional_nll(model, collate(encoder.encode_many(examples)),
        ...                        reduction="token_mean")              # doctest: +SKIP
        >>> loss.backward()                                              # doctest: +SKIP
    """
    loss, _ = response_nll(model, batch, reduction=reduction,
                           num_items_in_batch=num_items_in_batch, chunk_size=chunk_size)
    return loss


def packed_attention_mask(config: Any, sequence_ids: torch.Tensor, position_ids: torch.Tensor,
                          dtype: torch.dtype) -> Any:
    """The ``attention_mask`` argument of a packed batch: additive (B, 1, T, T), 0 where a
    query may attend to a key of its own example at or before it, dtype-min elsewhere (or
    ``{layer_type: mask}`` for models with sliding-window layers)."""
    empty = torch.zeros(0, dtype=torch.long)
    layout = RowLayout(input_ids=sequence_ids, position_ids=position_ids,
                       unit_ids=sequence_ids, branch_ids=torch.full_like(sequence_ids, -1),
                       rows=empty, cols=empty, targets=empty, order=[], lengths=[])
    return mask_for_layers(config, lambda window: allowed(layout, window), dtype)


def model_inputs(model: Any, batch: dict[str, torch.Tensor],
                 device: torch.device) -> dict[str, Any]:
    """``input_ids``, ``attention_mask`` (and ``position_ids`` when packed) on ``device``."""
    ids = batch["input_ids"].to(device)                                  # (B, T)
    if "sequence_ids" not in batch:
        mask = batch.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(device)  # (B, T)
        return {"input_ids": ids, "attention_mask": mask}
    dtype = next(model.parameters()).dtype
    mask = packed_attention_mask(model.config, batch["sequence_ids"], batch["position_ids"],
                                 dtype if dtype.is_floating_point else torch.float32)
    mask = {k: v.to(device) for k, v in mask.items()} if isinstance(mask, dict) \
        else mask.to(device)
    return {"input_ids": ids, "attention_mask": mask,
            "position_ids": batch["position_ids"].to(device)}


def response_nll(model: Any, batch: dict[str, torch.Tensor], *,
                 reduction: Reduction = "sum", num_items_in_batch: int | None = None,
                 chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`conditional_nll` plus each row's summed NLL, detached, fp64, shape (B,)."""
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    device = next(model.parameters()).device
    if "decoder_input_ids" in batch:
        return _seq2seq_nll(model, batch, reduction, num_items_in_batch, device)
    inputs = model_inputs(model, batch, device)   # a packed batch brings its 4D mask
    ids = inputs["input_ids"]                                              # (B, T)
    _, targets = shift(ids.unsqueeze(-1), batch["labels"].to(device))     # (B, T-1)
    rows, cols = (targets != IGNORE).nonzero(as_tuple=True)               # (N,), (N,)
    tgt = targets[rows, cols]                                              # (N,)
    scale = _scale(reduction, rows, num_items_in_batch)   # the reduction: sum x scale

    body = model.base_model if model.base_model is not model else None
    head = model.get_output_embeddings()
    transform = logit_transform(model.config)
    if body is not None and isinstance(head, torch.nn.Linear) and transform is None:
        out = body(**inputs, use_cache=False)
        h, _ = shift(last_hidden(out), targets)                            # (B, T-1, H)
        h = h[rows, cols]                                                  # (N, H)
        weight, bias = head.weight, head.bias
        if not torch.is_grad_enabled():   # no backward will come: skip computing gradients
            h, weight = h.detach(), weight.detach()
            bias = bias.detach() if bias is not None else None
        loss, token_nll = FusedLinearNLL.apply(h, weight, bias, tgt, scale,
                                               _chunk(chunk_size, weight.shape[0]))
    else:   # a logit transform or an unusual head: per-token NLL from the model's logits
        logits = model(**inputs, use_cache=False).logits                   # (B, T, V)
        lg, _ = shift(logits, targets)                                     # (B, T-1, V)
        token_nll = _logits_nll(lg[rows, cols], tgt)                        # (N,)
        loss = token_nll.sum() * scale                                     # ()
    return loss, _row_totals(token_nll, rows, ids.shape[0])


def _seq2seq_nll(model: Any, batch: dict[str, torch.Tensor], reduction: str,
                 num_items: int | None, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`response_nll` of an encoder-decoder batch, from the model's full logits."""
    names = ("input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask")
    labels = batch["labels"].to(device)                                    # (B, T)
    rows, cols = (labels != IGNORE).nonzero(as_tuple=True)                 # (N,), (N,)
    tgt = labels[rows, cols]                                               # (N,)
    scale = _scale(reduction, rows, num_items)
    logits = model(**{k: batch[k].to(device) for k in names}, use_cache=False).logits  # (B, T, V)
    token_nll = _logits_nll(logits[rows, cols], tgt)                       # (N,)
    return token_nll.sum() * scale, _row_totals(token_nll, rows, labels.shape[0])


def _logits_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(N, V) logits, (N,) targets -> (N,) -log softmax at the targets, in fp32."""
    lg = logits.float()
    return torch.logsumexp(lg, -1) - lg.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _row_totals(token_nll: torch.Tensor, rows: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(N,) per-token NLL of rows ``rows`` -> (B,) float64 sums per row, on the CPU."""
    per_row = torch.zeros(batch_size, dtype=torch.float64, device=token_nll.device)
    per_row.index_add_(0, rows, token_nll.detach().double())              # (B,)
    return per_row.cpu()


def _scale(reduction: str, rows: torch.Tensor, num_items: int | torch.Tensor | None) -> float:
    """The factor of the reduction: 1, 1/tokens of the step or 1/sequences of the step."""
    if reduction == "sum":
        return 1.0
    if num_items is None:
        num_items = rows.numel() if reduction == "token_mean" else rows.unique().numel()
    num_items = float(num_items.item() if torch.is_tensor(num_items) else num_items)
    if num_items <= 0:
        raise ConfigError(f"reduction={reduction!r} divides by the number of items, which is "
                          f"{num_items:g}: the batch has no response tokens (all labels are "
                          "-100) or num_items_in_batch is not positive; use reduction='sum' "
                          "or leave such batches out")
    return 1.0 / num_items


def _chunk(chunk_size: int | None, vocab_size: int) -> int:
    return chunk_size or chunk_rows(vocab_size)


class FusedLinearNLL(torch.autograd.Function):
    """``scale * sum_i (logsumexp(h_i W^T + b) - (h_i W^T + b)[y_i])``, chunked.

    Equivalent to ``scale * F.cross_entropy(h @ W.T + b, y, reduction="sum")`` with fp32
    logits, but the (N, V) logits never exist at once: each chunk's gradient with respect
    to ``h``, ``W`` and ``b`` is computed in the forward pass and scaled by the upstream
    gradient in the backward pass. Returns the scalar loss and the unweighted per-token NLL
    (N,), the latter detached.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor | None, targets: torch.Tensor, scale: float,
                chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = hidden.shape[0]
        want = ctx.needs_input_grad[:3]
        w_mm = weight.to(hidden.dtype)                                      # (V, H)
        nll = torch.empty(n, dtype=torch.float32, device=hidden.device)     # (N,)
        g_hidden = torch.empty_like(hidden) if want[0] else None            # (N, H)
        g_weight = torch.zeros_like(weight, dtype=torch.float32) if want[1] else None  # (V, H)
        g_bias = (torch.zeros_like(bias, dtype=torch.float32)
                  if bias is not None and want[2] else None)                # (V,)
        for s in range(0, n, chunk):
            h = hidden[s:s + chunk]                                          # (C, H)
            t = targets[s:s + chunk]                                         # (C,)
            logits = (h @ w_mm.T).float()                                    # (C, V) fp32
            if bias is not None:
                logits = logits + bias.float()
            logp = torch.log_softmax(logits, -1)                             # (C, V) fp32
            nll[s:s + chunk] = -logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
            if not any(want):
                continue
            # d nll_i / d logits_i = softmax(logits_i) - onehot(y_i), in place
            grad = logp.exp_()                                               # (C, V)
            grad[torch.arange(t.shape[0], device=t.device), t] -= 1.0
            if g_hidden is not None:
                g_hidden[s:s + chunk] = grad.to(hidden.dtype) @ w_mm         # (C, H)
            if g_weight is not None:
                g_weight.addmm_(grad.T, h.float())                           # (V, H)
            if g_bias is not None:
                g_bias.add_(grad.sum(0))                                     # (V,)
        ctx.grads = (g_hidden, g_weight, g_bias)
        ctx.scale = scale
        ctx.dtypes = (hidden.dtype, weight.dtype, bias.dtype if bias is not None else None)
        ctx.mark_non_differentiable(nll)
        loss = nll.sum() * scale                                             # ()
        return loss, nll

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, grad_nll: Any) -> tuple[Any, ...]:
        scale = grad_loss.float() * ctx.scale
        out = [None if g is None else (g.float() * scale).to(dt)
               for g, dt in zip(ctx.grads, ctx.dtypes)]
        ctx.grads = None
        return out[0], out[1], out[2], None, None, None


def trainer_loss(outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None
                 ) -> torch.Tensor:
    """``compute_loss_func`` for ``transformers.Trainer``: response-only token-mean NLL.

    The Trainer passes the model's outputs (full logits), the ``labels`` of :func:`collate`
    (or of any collator using -100 for ignored positions) and the step's count of predicted
    tokens; the loss is divided by that count, so gradient accumulation gives the gradient
    of one big batch. Log-softmax in fp32.

    Example:
        >>> Trainer(model=model, args=args, train_dataset=ds, data_collator=...,
        ...         compute_loss_func=trainer_loss)                          # doctest: +SKIP
    """
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits   # (B, T, V)
    lg, lb = shift(logits, labels.to(logits.device))                      # (B, T-1, V), (B, T-1)
    keep = lb != IGNORE                                                   # (B, T-1)
    lg, lb = lg[keep].float(), lb[keep]                                   # (N, V), (N,)
    nll = torch.logsumexp(lg, -1) - lg.gather(-1, lb.unsqueeze(-1)).squeeze(-1)   # (N,)
    if num_items_in_batch is None:
        return nll.mean() if nll.numel() else nll.sum()
    return nll.sum() / num_items_in_batch
