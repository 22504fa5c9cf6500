"""``loglik eval --model PATH --tasks ... [any lm_eval flag]``: lm-eval's own CLI, loglik's model.

Everything after ``--model`` (and ``--batch-tokens``) goes to lm-eval's ``run`` command
unchanged; the model is ``loglik`` with ``pretrained=PATH`` (the embedded default model
without ``--model``) merged into any ``--model_args`` given. Needs ``pip install
'loglik[lmeval]'``.
"""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="run lm-evaluation-harness tasks with loglik as the model",
        description="lm-evaluation-harness's own 'run' command with loglik's model: pass any "
        "lm_eval flag (--tasks, --num_fewshot, --limit, --output_path, --log_samples, "
        "--include_path, --apply_chat_template, --model_args ...).",
        epilog="example: loglik eval --model ./my-model --tasks arc_easy,hellaswag "
        "--output_path runs/a --log_samples", allow_abbrev=False)
    p.add_argument("--model", default=None, metavar="PATH_OR_ID",
                   help="model folder or Hugging Face id (default: the embedded model)")
    p.add_argument("--batch-tokens", type=int, default=None,
                   help="padded tokens per forward pass (default 2048 on CPU, 8192 on GPU)")
    p.set_defaults(run=run, lm_eval_args=[])
    # Flags this parser does not know are lm_eval's: keep them, in order, instead of letting
    # the top-level parser reject them (argparse's REMAINDER stops at the first unknown flag).
    known = p.parse_known_args

    def parse_known_args(args=None, namespace=None):
        ns, extra = known(args, namespace)
        ns.lm_eval_args = [*ns.lm_eval_args, *extra]
        return ns, []

    p.parse_known_args = parse_known_args  # type: ignore[method-assign]


def lm_eval_argv(model: str, lm_eval_args: list[str], batch_tokens: int | None = None
                 ) -> list[str]:
    """The ``lm_eval run`` command line: loglik's model, its args first, the user's after.

    >>> lm_eval_argv("m", ["--tasks", "t", "--model_args", "dtype=bfloat16"])
    ['run', '--model', 'loglik', '--model_args', 'pretrained=m', '--tasks', 't', \
'--model_args', 'dtype=bfloat16']
    """
    from ..errors import ConfigError

    rest = [a for a in lm_eval_args if a != "--"]
    for flag in ("--model", "-M"):
        if flag in rest:
            raise ConfigError("pass the model as loglik eval --model PATH_OR_ID before the "
                              "lm_eval flags; the lm_eval model is always 'loglik'")
    ours = f"pretrained={model}" + (f",batch_tokens={batch_tokens}" if batch_tokens else "")
    return ["run", "--model", "loglik", "--model_args", ours, *rest]


def run(args: argparse.Namespace) -> int:
    import sys

    from ..errors import require

    require("lm_eval", extra="lmeval", feature="loglik eval")
    from lm_eval.__main__ import cli_evaluate

    from .. import lmeval  # noqa: F401  (registers the model "loglik")
    from ..default_model import default_model_path

    argv = lm_eval_argv(args.model or default_model_path(), args.lm_eval_args,
                        args.batch_tokens)
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    finally:
        sys.argv = saved
    return 0
