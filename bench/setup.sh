#!/usr/bin/env bash
# Install the baseline tools (lm-evaluation-harness, minicons) for bench/run.py into
# bench/.venv, a venv that sees the system packages (torch, transformers, loglik).
# torch is pinned on the same pip command line so pip never swaps in another build.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  rm -rf .venv && "$PY" -m venv --system-site-packages .venv
fi
.venv/bin/python -m pip --version >/dev/null 2>&1 || .venv/bin/python -m ensurepip -q
TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
TF=$("$PY" -c 'import transformers; print(transformers.__version__)')
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off
.venv/bin/python -m pip install -q "lm-eval==0.4.13" "minicons==0.3.39" \
  "torch==$TORCH" "transformers==$TF"
.venv/bin/python -c 'import lm_eval, minicons, torch; print("bench/.venv ready: lm-eval", lm_eval.__version__ if hasattr(lm_eval, "__version__") else "?", "torch", torch.__version__)'
