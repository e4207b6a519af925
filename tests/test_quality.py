"""The code stays ruff-clean and fully typed (mypy), as the project's conventions require."""

from __future__ import annotations

import subprocess
import sys

from tests.harness import REPO


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff_finds_nothing():
    done = run("ruff", "check", ".")
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_finds_nothing():
    done = run("mypy", "streamchat", "app.py")
    assert done.returncode == 0, done.stdout + done.stderr
