"""The import layers declared in pyproject.toml hold (a future circle fails here, and in CI)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept():
    exe = shutil.which("lint-imports")
    if exe is None:
        pytest.fail("lint-imports is missing: pip install -e '.[dev]' installs import-linter")
    src = str(ROOT / "src")
    env = {"PYTHONPATH": src, "PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin"}
    done = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_no_module_reads_another_modules_private_names():
    """``other._name`` across loglik's own modules: only through the protocol or public names."""
    import re

    pattern = re.compile(r"\b(backend|scorer|hf|model_checks|adapter)\._[a-z]\w*")
    offenders = []
    for path in sorted((ROOT / "src" / "loglik").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if pattern.search(code) and "self." not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)
