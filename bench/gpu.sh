#!/usr/bin/env bash
# The GPU benchmark in one command (bench/gpu.py does the work; see its docstring).
#
#   bash bench/gpu.sh              # on a CUDA machine, from the repository root or anywhere
#   bash bench/gpu.sh --dry-run    # anywhere: tiny models on the CPU, every code path
#
# Installs what is missing, never fatally and each within INSTALL_TIMEOUT seconds (default
# 240): loglik itself (editable), lm-eval 0.4.13 (torch and transformers pinned to the ones
# present so pip never swaps them), and vLLM into its own venv, bench/.venv-vllm (vLLM pins
# its own torch), in the background while the other tools run. No model hub downloads: the
# models are built from a config with random weights. Offline machines: point PIP_FIND_LINKS
# at a wheelhouse, or go without (the rows that cannot run say why). Other arguments go to
# bench/gpu.py. Target: under 10 minutes including installs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LIMIT=${INSTALL_TIMEOUT:-240}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
start=$(date +%s)

pip_install() {   # pip_install PYTHON ARGS...: bounded in time, never fatal
  local py=$1; shift
  timeout "$LIMIT" "$py" -m pip install -q --timeout 20 --retries 1 "$@" \
    || { echo "gpu.sh: could not install $* (no package index or wheelhouse reachable?)"; return 1; }
}

if ! "$PY" -c 'import torch' 2>/dev/null; then
  echo "gpu.sh: torch is missing; install a CUDA build of torch first" >&2; exit 2
fi
if [ "$DRY" = 0 ]; then
  "$PY" -c 'import loglik' 2>/dev/null || pip_install "$PY" -e .
  TORCH=$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')
  TF=$("$PY" -c 'import transformers; print(transformers.__version__)' 2>/dev/null || echo "")
  "$PY" -c 'import lm_eval' 2>/dev/null \
    || pip_install "$PY" "lm-eval==0.4.13" "torch==$TORCH" ${TF:+"transformers==$TF"}
  VLLM_PY=bench/.venv-vllm/bin/python
  if "$PY" -c 'import vllm' 2>/dev/null; then
    VLLM_PY=$PY
  elif [ ! -x "$VLLM_PY" ] || ! "$VLLM_PY" -c 'import vllm' 2>/dev/null; then
    ( "$PY" -m venv bench/.venv-vllm && pip_install "$VLLM_PY" vllm \
        && touch bench/.venv-vllm/ready ) > bench/.venv-vllm.log 2>&1 &
    echo "gpu.sh: installing vLLM into bench/.venv-vllm in the background (log: bench/.venv-vllm.log)"
  else
    touch bench/.venv-vllm/ready
  fi
  set -- --vllm-python "$VLLM_PY" --vllm-wait "$LIMIT" "$@"
fi
echo "gpu.sh: installs checked in $(( $(date +%s) - start ))s"
PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" bench/gpu.py "$@"
rc=$?
echo "gpu.sh: done in $(( $(date +%s) - start ))s (exit $rc)"
exit $rc
