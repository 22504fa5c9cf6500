"""bench/gpu.py: the GPU benchmark's peak table and its CPU dry run (every code path)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _gpu_module():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_peak_by_device_name():
    gpu = _gpu_module()
    assert gpu.peak_tflops("NVIDIA H200") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert gpu.peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu.peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu.peak_tflops("NVIDIA L40S") == 362.0
    assert gpu.peak_tflops("Some Future GPU") is None


def test_cpu_plan_skips_vllm_with_a_reason():
    runs, skipped = _gpu_module().plan_tools(True, "cpu")
    assert "vllm" not in [label for label, _, _ in runs]
    assert "vllm: needs a CUDA GPU" in skipped
    assert {"loglik", "loglik varlen", "loop b1"} <= {label for label, _, _ in runs}


@pytest.mark.slow
@pytest.mark.timeout(3600)   # six tool processes; each start-up is slow on a busy CPU
def test_dry_run_runs_every_path_on_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / "gpu.py"), "--dry-run", "--cache",
                           str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=3500, env=env)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "skipped vllm: needs a CUDA GPU" in out
    for workload in ("pairs", "choices", "best_of_16", "long"):
        assert f"\n{workload}: " in out
    for label in ("loglik", "loglik varlen", "loop b1", "lm-eval auto"):
        assert f"  {label}: ok" in out, out
    assert "failed" not in out and "DISAGREE" not in out
    assert (tmp_path / "out" / "gpu.json").exists()
