"""``loglik serve --model PATH``: exact log-probs over HTTP (OpenAI completions + /v1/score)."""

from __future__ import annotations

import argparse
import os

from .common import add_encode_options, add_model_options


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve exact log-probs over HTTP",
                       description="An OpenAI-compatible completions server (echo + logprobs, "
                       "token-id prompts, vLLM's prompt_logprobs) and /v1/score, over one model. "
                       "Binds to 127.0.0.1 unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--api-key-env", default=None, metavar="VAR",
                   help="require 'Authorization: Bearer KEY', KEY read from this environment "
                   "variable")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: the folder name of --model)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    p.add_argument("--batches-in-flight", type=int, default=2, metavar="N",
                   help="batches handed to the model worker process at once, so it finds the "
                   "next one waiting when it finishes one (default 2; 1 = one at a time; a "
                   "model in the server process, --no-worker, takes one)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="requests waiting at most; more get 503 + Retry-After (default 1024)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024,
                   help="largest request body (default 8 MiB); larger get 413")
    p.add_argument("--max-request-tokens", type=int, default=65536,
                   help="tokens one request may score or generate (default 65536)")
    p.add_argument("--max-new-tokens", type=int, default=512,
                   help="largest max_tokens a completion may ask for (default 512)")
    p.add_argument("--worker", action=argparse.BooleanOptionalAction, default=None,
                   help="run the model in a worker process (the HTTP side keeps its own "
                   "core); default: on for Hugging Face models, off for .gguf files and "
                   "http:// servers")
    add_model_options(p)
    add_encode_options(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..serve import ServeConfig
    from ..serve import run as serve
    from .common import scorer_from_args

    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError(f"--api-key-env {args.api_key_env}: that environment variable "
                              "is unset or empty; export it with the key clients must send")
    config = ServeConfig(api_key=key, max_body_bytes=args.max_body_bytes,
                         max_request_tokens=args.max_request_tokens,
                         max_new_tokens=args.max_new_tokens, max_queue=args.max_queue,
                         batch_wait_ms=args.batch_wait_ms,
                         batches_in_flight=args.batches_in_flight)
    scorer = (_worker_scorer(args) if _use_worker(args)
              else scorer_from_args(args, transformers_model=True))
    name = args.served_model_name or (os.path.basename(os.path.normpath(args.model))
                                      if args.model else "loglik-default")
    serve(scorer, host=args.host, port=args.port, config=config, model_name=name,
          log_level="info" if args.verbose else "warning")
    return 0


def _use_worker(args: argparse.Namespace) -> bool:
    """--worker, else on where it measured faster (README, serve): not for a .gguf file (its
    tokenizer is llama.cpp's, inside the model) nor a server URL (no model here)."""
    from ..errors import ConfigError
    from .common import is_server_url

    model = str(args.model or "")
    remote = is_server_url(model)
    if args.worker and remote:
        raise ConfigError("--worker: --model is a server URL, there is no model to run in a "
                          "worker; drop --worker")
    if args.worker is not None:
        return args.worker
    return not remote and not model.lower().endswith(".gguf")


def _worker_scorer(args: argparse.Namespace):
    """The worker loads what scorer_from_args would (transformers for the default model)."""
    from ..default_model import default_model_path
    from ..hub import check_model_source
    from ..serve.worker import start_worker
    from .common import scorer_kwargs

    model = args.model or default_model_path()
    check_model_source(model, revision=args.revision)
    return start_worker(model, **scorer_kwargs(args))
