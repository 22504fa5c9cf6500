"""Options shared by several commands; their names are the Python keyword arguments."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(p: argparse.ArgumentParser, *, multiple: bool = False) -> None:
    if multiple:
        p.add_argument("--model", action="append", default=None, metavar="PATH_OR_ID",
                       help="model folder, Hugging Face id or .gguf file (repeat for several)")
    else:
        p.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="model folder, Hugging Face id or .gguf file (default: the "
                       "embedded model)")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="a LoRA adapter folder ('loglik train --lora' output) applied to "
                   "--model (its base model)")
    p.add_argument("--dtype", default=None,
                   help="float32, bfloat16, float16, auto (default: bfloat16 on CUDA, else float32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    p.add_argument("--revision", default=None, help="model revision on the hub")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code to run (off by default)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow loading pickle (.bin) weights; safetensors only by default")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per forward pass (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch, or for llama.cpp with a .gguf model "
                   "(default: all cores)")
    add_server_options(p)


def add_server_options(p: argparse.ArgumentParser) -> None:
    """--model http://HOST:PORT/v1: score through an OpenAI-compatible server."""
    p.add_argument("--tokenizer", default=None, metavar="PATH_OR_ID",
                   help="with --model http://...: the model's tokenizer (loglik tokenizes)")
    p.add_argument("--served-model", default=None, metavar="NAME",
                   help="with --model http://...: the model name the server serves")
    p.add_argument("--concurrency", type=int, default=8,
                   help="with --model http://...: requests in flight (default 8)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="with --model http://...: seconds per request (default 60)")


def add_encode_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bos", choices=("auto", "always", "never"), default="auto",
                   help="prepend BOS: follow the tokenizer (auto), always, never")
    p.add_argument("--score-eos", action="store_true", help="append EOS to the response and score it")
    p.add_argument("--whitespace", choices=("move", "keep"), default="move",
                   help="move the prompt's trailing whitespace to the response (default) or keep it")
    p.add_argument("--truncate", choices=("error", "left"), default="error",
                   help="an example longer than the context: error (default) or drop prompt "
                   "tokens from the left")
    p.add_argument("--parse-special", action="store_true",
                   help="special-token strings in the text (</s>, <|endoftext|>) become control "
                   "tokens (default: they are the characters typed)")
    p.add_argument("--turns", choices=("last", "all"), default="last",
                   help="conversations (messages records): score the last assistant message "
                   "(default) or all of them (turns: [...] in the output)")
    p.add_argument("--no-end-of-turn", dest="end_of_turn", action="store_false",
                   help="conversations: score the assistant content only, not the template's "
                   "end-of-turn tokens")
    p.add_argument("--chat-template", default=None, metavar="FILE",
                   help="conversations: a Jinja chat template file instead of the tokenizer's")


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt-field", default="prompt", help="field holding the prompt")
    p.add_argument("--response-field", default="response", help="field holding the response")
    p.add_argument("--id-field", default="id", help="field carried through as the record id")
    p.add_argument("--messages-field", default="messages",
                   help="field holding a conversation (OpenAI messages) instead of prompt/response")
    p.add_argument("--format", choices=("jsonl", "csv", "parquet"), default=None,
                   help="input format (default: from the file name; '-' is JSONL)")


def add_view_options(p: argparse.ArgumentParser, *, progress: bool = False) -> None:
    p.add_argument("--wide", action="store_true",
                   help="every column of the tables, however narrow the terminal (default: "
                   "the columns that fit; files and pipes get every column)")
    if progress:
        add_progress_option(p)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress on stderr (default: when stderr is a terminal)")


def fields_from_args(args: argparse.Namespace):
    from ..data import Fields

    return Fields(prompt=args.prompt_field, response=args.response_field, id=args.id_field,
                  messages=getattr(args, "messages_field", "messages"))


def scorer_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(dtype=args.dtype, device=args.device, revision=args.revision,
                trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle,
                batch_tokens=args.batch_tokens, bos=args.bos, score_eos=args.score_eos,
                whitespace=args.whitespace, truncate=args.truncate,
                threads=getattr(args, "threads", None), adapter=getattr(args, "adapter", None),
                parse_special=getattr(args, "parse_special", False),
                turns=getattr(args, "turns", "last"),
                end_of_turn=getattr(args, "end_of_turn", True),
                chat_template=read_chat_template(getattr(args, "chat_template", None)))


def read_chat_template(path: str | None) -> str | None:
    """The text of a --chat-template FILE (None for none); an InputError if unreadable."""
    if path is None:
        return None
    from ..errors import InputError

    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise InputError(f"cannot read the chat template: {exc.strerror}; pass a Jinja "
                         "template file", source=path, field="--chat-template") from None


def is_server_url(model: Any) -> bool:
    """--model http://HOST:PORT/v1 names an OpenAI-compatible server, not weights."""
    return isinstance(model, str) and model.startswith(("http://", "https://"))


def scorer_from_args(args: argparse.Namespace, model: str | None = None, *,
                     transformers_model: bool = False):
    """The scorer the command's options ask for. ``transformers_model``: a command that calls
    the model's own forward or ``generate`` (audit, serve) gets the default model through
    transformers, not loglik's start-up-light module (:mod:`loglik.backends.hf.compact`)."""
    from ..hub import check_model_source
    from ..scorer import Scorer

    model = model if model is not None else args.model
    if model is None and transformers_model:
        from ..default_model import default_model_path

        model = default_model_path()
    if is_server_url(model):
        return Scorer.from_server(model, tokenizer=getattr(args, "tokenizer", None),
                                  model=getattr(args, "served_model", None),
                                  concurrency=getattr(args, "concurrency", 8),
                                  timeout=getattr(args, "timeout", 60.0),
                                  batch_tokens=args.batch_tokens, bos=args.bos,
                                  score_eos=args.score_eos, whitespace=args.whitespace,
                                  truncate=args.truncate)
    check_model_source(model, revision=args.revision)
    return Scorer.from_pretrained(model, **scorer_kwargs(args))
