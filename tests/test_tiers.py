"""The test tiers and the no-tests guard, checked by running pytest as CI does: the fast tier
leaves out browser and load tests, and a run in which nothing was checked never passes in CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO


def run_pytest(*args: str, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_fast_tier_leaves_out_browser_and_load_tests():
    files = ["tests/e2e/test_browser_xss.py", "tests/test_many_streams.py", "tests/test_overlap.py"]
    listed = run_pytest("--collect-only", "-q", "-m", "not slow", *files, ci=False)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    collected = [line for line in listed.stdout.splitlines() if "::" in line]
    assert collected, listed.stdout
    assert all(line.startswith("tests/test_overlap.py::") for line in collected), collected


def test_a_run_that_selects_no_test_fails_in_ci_and_says_why():
    nothing = ("-m", "slow and not slow", "tests/test_overlap.py")
    in_ci = run_pytest(*nothing, ci=True)
    assert in_ci.returncode == 1
    assert "no tests ran" in in_ci.stdout
    elsewhere = run_pytest(*nothing, ci=False)
    assert elsewhere.returncode == 5 and "no tests ran" in elsewhere.stdout


def test_a_run_in_which_every_test_skipped_fails_in_ci(tmp_path: Path):
    only_skips = tmp_path / "test_only_skips.py"
    only_skips.write_text("import pytest\n\ndef test_x():\n    pytest.skip('not here')\n")
    # Outside tests/, so the checkout's conftest is loaded as a plugin, as it is for tests/.
    args = ("-c", str(REPO / "pyproject.toml"), "-p", "tests.conftest", str(only_skips))
    in_ci = run_pytest(*args, ci=True)
    assert in_ci.returncode == 1, in_ci.stdout
    assert "every selected test was skipped" in in_ci.stdout
    assert run_pytest(*args, ci=False).returncode == 0
