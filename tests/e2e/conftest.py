"""The real local stack for end-to-end tests: the ``stack`` and ``isolated_config`` fixtures are in
tests/conftest.py (shared with e2e-marked tests elsewhere, e.g. tests/jobs/test_bench.py);
``stack_ctl`` (failure drills) is here."""
from __future__ import annotations

import subprocess

import pytest

from jobs.config import REPO_ROOT


@pytest.fixture(scope="session")
def stack_ctl():
    """Run a ``deploy/stack.sh`` subcommand (e.g. ``restart-taskmanager``); returns its output, fails on error."""
    def run(*args: str, timeout: float = 240) -> str:
        proc = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "stack.sh"), *args], capture_output=True,
                              text=True, timeout=timeout)
        out = (proc.stdout + proc.stderr).strip()
        print(f"$ deploy/stack.sh {' '.join(args)}  (exit {proc.returncode})\n{out}")
        if proc.returncode != 0:
            raise RuntimeError(f"deploy/stack.sh {' '.join(args)} failed (exit {proc.returncode}):\n{out[-3000:]}")
        return out
    return run
