"""Shared fixtures: the standalone offline server, running apps, and the rule for components
that may be missing (fail in CI, skip with a reason on a developer's machine)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from streamchat.offline import OfflineServer

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")


def require_component(available: bool, reason: str) -> None:
    """Tests that need a real component fail in CI when it is missing, and skip elsewhere."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"required component missing in CI: {reason}")
    pytest.skip(reason)


def require_chromium() -> str:
    require_component(
        os.path.exists(CHROMIUM) or shutil.which("chromium") is not None,
        f"Chromium not found at {CHROMIUM} (install it: apt-get install -y chromium)",
    )
    return CHROMIUM if os.path.exists(CHROMIUM) else str(shutil.which("chromium"))


@pytest.fixture(scope="session")
def offline_server() -> Iterator[OfflineServer]:
    """A standalone offline model, fast, shared by tests that point the app at a base URL."""
    with OfflineServer(tokens_per_second=200, first_token_delay_ms=10) as server:
        yield server


@pytest.fixture(scope="session")
def slow_offline_server() -> Iterator[OfflineServer]:
    """Paced like a real model, so a Stop can land in the middle of an answer."""
    with OfflineServer(tokens_per_second=20, first_token_delay_ms=50) as server:
        yield server
