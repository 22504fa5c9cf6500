"""loglik audit --engine: loglik serve passes; each wrong engine is caught and named."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")


def test_loglik_serve_passes_every_check(llama_scorer):
    from loglik.audit.engine import ENGINE_CHECKS, audit_engine
    from loglik.serve import BackgroundServer, create_app

    with BackgroundServer(create_app(llama_scorer, model_name="tiny")) as srv:
        report = audit_engine(srv.url + "/v1", llama_scorer, max_examples=6)
    assert [c.name for c in report.checks] == list(ENGINE_CHECKS)
    assert report.passed, report.to_dict()
    agreement = report.check("agreement").details
    assert agreement["max_abs_diff"] < 1e-5 and agreement["tokens"] > 40
    assert abs(report.check("sampling").details["implied_temperature"] - 1) < 1e-3


@pytest.mark.parametrize("flaw,check,diagnosis", [
    ("shifted", "alignment", "shifted"),
    ("drop_first", "alignment", "first_token_dropped"),
    ("top_k", "normalisation", "top_k_renormalised"),
    ("temperature", "sampling", "temperature_applied"),
])
def test_wrong_engines_are_caught_and_named(tiny_llama, llama_scorer, flaw, check, diagnosis):
    from .wrong_engine import wrong_app

    from loglik.audit.engine import audit_engine
    from loglik.serve import BackgroundServer

    with BackgroundServer(wrong_app(tiny_llama, flaw)) as srv:
        report = audit_engine(srv.url + "/v1", llama_scorer, max_examples=4)
    assert not report.passed
    result = report.check(check)
    assert result.status == "fail" and diagnosis in result.summary
    if check == "alignment":
        assert result.details["diagnoses"] == {diagnosis: 4}
    else:
        assert result.details["diagnosis"] == diagnosis
        assert report.check("agreement").status == "fail"
        assert report.check("alignment").passed and report.check("determinism").passed
    if flaw == "temperature":
        assert abs(result.details["implied_temperature"] - 2.0) < 0.05


def test_a_correct_engine_passes(tiny_llama, llama_scorer):
    from .wrong_engine import wrong_app

    from loglik.audit.engine import audit_engine
    from loglik.serve import BackgroundServer

    with BackgroundServer(wrong_app(tiny_llama, "none")) as srv:
        report = audit_engine(srv.url + "/v1", llama_scorer, max_examples=4)
    assert report.passed, report.to_dict()


@pytest.mark.slow
def test_cli_audit_engine_json(tiny_model_dir, tiny_llama):
    """One process: the command exits 1 and its JSON names the flaw."""
    from .wrong_engine import wrong_app

    from loglik.serve import BackgroundServer

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with BackgroundServer(wrong_app(tiny_llama, "shifted")) as srv:
        proc = subprocess.run(
            [sys.executable, "-m", "loglik", "audit", "--engine", srv.url + "/v1",
             "--model", tiny_model_dir, "--max-examples", "4", "--json"],
            capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["passed"] is False
    assert [c["name"] for c in out["checks"]][:2] == ["alignment", "agreement"]
    assert out["checks"][0]["diagnoses"] == {"shifted": 4}
