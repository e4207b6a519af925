"""Real database servers for tests: a throwaway PostgreSQL cluster (Debian's packages) and a
throwaway Redis, on loopback, started and stopped by the tests that need them.

In CI (CI=true) a missing server fails the test; elsewhere it is skipped with the reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import require_component
from tests.harness import free_port
from tests.waiting import accepts_connections, wait_until


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres_user(command: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; Debian's package creates the postgres user.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


def _wait_for_port(port: int, within: float) -> bool:
    try:
        wait_until(lambda: accepts_connections(port), within=within, what=f"port {port}", every=0.1)
    except TimeoutError:
        return False
    return True


class PostgresCluster:
    """A throwaway PostgreSQL cluster that a test can stop and start again (an outage)."""

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir, self.root, self.port = bin_dir, root, port
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            _as_postgres_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), *args]),
            capture_output=True,
        )

    def start(self) -> bool:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = self._ctl("-o", options, "-l", str(self.root / "log"), "-w", "start")
        self.problem = started.stderr.decode(errors="replace")[-300:]
        return started.returncode == 0 and _wait_for_port(self.port, 30)

    def stop(self) -> None:
        """Stop at once, dropping every connection (as a crashed or restarted server does)."""
        self._ctl("-m", "immediate", "-w", "stop")


@contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A fresh PostgreSQL cluster, started."""
    bin_dir = _pg_bin()
    require_component(
        bin_dir is not None, "PostgreSQL not found (install it: apt-get install -y postgresql)"
    )
    assert bin_dir is not None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            require_component(False, "PostgreSQL's postgres user is missing")
    root = Path(tempfile.mkdtemp(prefix="streamchat-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres_user(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(root / "data"),
                "--auth=trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ]
        ),
        check=True,
        capture_output=True,
    )
    cluster = PostgresCluster(bin_dir, root, free_port())
    try:
        require_component(cluster.start(), f"PostgreSQL did not start: {cluster.problem}")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def postgres_server() -> Iterator[str]:
    """A fresh PostgreSQL cluster; yields its URL (postgresql://postgres@127.0.0.1:PORT/postgres)."""
    with postgres_cluster() as cluster:
        yield cluster.url


@contextmanager
def redis_server() -> Iterator[str]:
    """A fresh Redis server (Debian's redis-server) with no persistence; yields redis://127.0.0.1:PORT/0."""
    binary = shutil.which("redis-server")
    require_component(
        binary is not None, "Redis not found (install it: apt-get install -y redis-server)"
    )
    assert binary is not None
    root = Path(tempfile.mkdtemp(prefix="streamchat-redis-"))
    port = free_port()
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(root),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        require_component(
            _wait_for_port(port, 20) and process.poll() is None, "Redis did not start"
        )
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(root, ignore_errors=True)


class RedisState:
    """What a test waits for in a Redis server (subscribers, keys, stream entries), read with a
    client of its own."""

    def __init__(self, client: Any) -> None:
        self._redis = client

    async def subscribers(self, channel: str) -> int:
        counts = await self._redis.pubsub_numsub(channel)
        return int(counts[0][1]) if counts else 0

    async def exists(self, key: str) -> bool:
        return bool(await self._redis.exists(key))

    async def entries(self, key: str) -> int:
        return int(await self._redis.xlen(key))

    async def last_entry(self, key: str) -> dict[str, str] | None:
        """The newest entry's fields in the stream at `key` (None when there is none)."""
        newest = await self._redis.xrevrange(key, count=1)
        if not newest:
            return None
        return {_text(name): _text(value) for name, value in newest[0][1].items()}


@asynccontextmanager
async def redis_state(url: str) -> AsyncIterator[RedisState]:
    import redis.asyncio as redis

    client = redis.from_url(url)
    try:
        yield RedisState(client)
    finally:
        await client.aclose()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
