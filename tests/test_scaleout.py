"""Scale-out: two app processes sharing Redis, behind a real nginx configured from
deploy/nginx.conf. Socket.IO sessions stick to one replica through the proxy (long-polling then
the websocket upgrade, which fails without stickiness); an SSE stream started on one replica is
resumed on the other with Last-Event-ID, exactly; a DELETE on the other replica stops it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
import socketio

from streamchat.offline import OfflineServer
from streamchat.offline.lessons import choose_answer
from tests.conftest import require_component
from tests.databases import redis_server
from tests.harness import AppProcess, ChainlitClient, free_port, upstream_ended, upstream_requests
from tests.test_sse_integration import Received, sse_events, text_of
from tests.waiting import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(template: str, root: Path, port: int, replicas: list[int]) -> str:
    """deploy/nginx.conf with this machine's ports and paths: the same proxy directives."""
    servers = "\n".join(
        f"        server 127.0.0.1:{p} max_fails=3 fail_timeout=10s;" for p in replicas
    )
    config = re.sub(r"(?m)^\s*server app\d+:8000[^\n]*\n", "", template)
    config = config.replace("        keepalive 32;", f"{servers}\n        keepalive 32;")
    config = config.replace("listen 80;", f"listen 127.0.0.1:{port};")
    config = config.replace("worker_processes auto;", "worker_processes 1;")
    paths = (
        f"pid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n"
        if os.geteuid() != 0
        else f"user root;\npid {root}/nginx.pid;\nerror_log {root}/error.log warn;\n"
    )
    temp = (
        f"    access_log {root}/access.log;\n"
        f"    client_body_temp_path {root}/body;\n    proxy_temp_path {root}/proxy;\n"
        f"    fastcgi_temp_path {root}/fastcgi;\n    uwsgi_temp_path {root}/uwsgi;\n"
        f"    scgi_temp_path {root}/scgi;\n"
    )
    return paths + config.replace("http {\n", "http {\n" + temp, 1)


@pytest.fixture(scope="module")
def upstream() -> Iterator[OfflineServer]:
    with OfflineServer(tokens_per_second=60, first_token_delay_ms=10) as server:
        yield server


@contextmanager
def nginx_proxy(replicas: list[int], template: str | None = None) -> Iterator[str]:
    """A real nginx in front of these local ports, configured from deploy/nginx.conf (or from
    `template`); yields its URL, on a port other than 80 as an operator's often is."""
    require_component(
        os.path.exists(NGINX), "nginx not found (install it: apt-get install -y nginx)"
    )
    root = Path(tempfile.mkdtemp(prefix="streamchat-nginx-"))
    port = free_port()
    template = template or (REPO / "deploy" / "nginx.conf").read_text()
    (root / "nginx.conf").write_text(nginx_config(template, root, port, replicas))
    proxy = subprocess.Popen(
        [NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proxy.poll() is None:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        assert proxy.poll() is None, proxy.stderr.read().decode() if proxy.stderr else ""
        yield f"http://127.0.0.1:{port}"
    finally:
        proxy.terminate()
        proxy.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(upstream: OfflineServer) -> Iterator[tuple[str, AppProcess, AppProcess]]:
    require_component(
        os.path.exists(NGINX), "nginx not found (install it: apt-get install -y nginx)"
    )
    with redis_server() as redis_url:
        env = {"OPENAI_BASE_URL": upstream.base_url, "REDIS_URL": redis_url}
        with (
            AppProcess(env) as one,
            AppProcess(env) as two,
            nginx_proxy([one.port, two.port]) as proxy_url,
        ):
            yield proxy_url, one, two


async def test_socketio_sessions_stick_to_one_replica_through_nginx(cluster):
    proxy_url, _, _ = cluster
    for attempt in range(4):
        # Long-polling first, then the upgrade: every request of the session must reach the
        # replica that created it, or the handshake fails with "Invalid session".
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            proxy_url,
            socketio_path="/ws/socket.io",
            transports=["polling", "websocket"],
            auth={
                "clientType": "webapp",
                "sessionId": f"sticky-{attempt}",
                "threadId": "",
                "userEnv": "{}",
            },
            wait_timeout=10,
        )
        # The upgrade to websocket happens in the background, through nginx to the same replica.
        await eventually(
            lambda client=client: client.transport() == "websocket",
            within=10,
            what="the websocket upgrade",
        )
        await client.disconnect()
    chat = await ChainlitClient(proxy_url).connect()
    try:
        answer = await chat.ask("What is a token?")
        assert "token" in answer.final_assistant_text().lower()
    finally:
        await chat.close()


async def test_a_stream_started_on_one_replica_resumes_on_the_other(cluster, upstream):
    _, one, two = cluster
    upstream.records.clear()
    seen: list[Received] = []
    async with httpx2.AsyncClient(timeout=60) as http:
        async with http.stream(
            "GET", f"{one.url}/api/stream", params={"prompt": "Explain backpressure"}
        ) as response:
            assert response.status_code == 200
            async for item in sse_events(response):
                if isinstance(item, Received):
                    seen.append(item)
                if len([e for e in seen if e.event == "token"]) >= 10:
                    break  # the network blips: this connection is gone
        last_id = seen[-1].id
        rest = []
        async with http.stream(
            "GET", f"{two.url}/api/stream", headers={"Last-Event-ID": last_id}
        ) as response:
            assert response.status_code == 200
            rest = [item async for item in sse_events(response)]
    record = (await upstream_requests(upstream, 1))[0]
    assert len(upstream.records.all()) == 1, "resumed, not asked again"
    assert text_of(seen) + text_of(rest) == choose_answer(record.messages)
    ids = [e.id for e in seen + rest if isinstance(e, Received)]
    seqs = [int(i.rsplit(":", 1)[1]) for i in ids]
    assert seqs == list(range(1, len(seqs) + 1)), "no gaps, no duplicates"
    assert rest[-1].event == "done"


async def test_a_delete_on_the_other_replica_stops_the_stream(cluster, upstream):
    _, one, two = cluster
    upstream.records.clear()
    async with httpx2.AsyncClient(timeout=60) as http:
        async with http.stream(
            "GET", f"{one.url}/api/stream", params={"prompt": "What is a token?"}
        ) as response:
            stream_id = ""
            async for item in sse_events(response):
                if isinstance(item, Received) and item.event == "token":
                    stream_id = item.id.rsplit(":", 1)[0]
                    break
        record = (await upstream_requests(upstream, 1))[0]
        stopped = await http.delete(f"{two.url}/api/stream/{stream_id}")
        assert stopped.status_code == 200 and stopped.json()["stopped"] == stream_id
        assert await upstream_ended(record, within=5) and not record.completed
        unknown = await http.delete(f"{two.url}/api/stream/nosuchstream")
        assert unknown.status_code == 404
