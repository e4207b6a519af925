"""Watch a page as a person's browser would be seen from outside: every request that leaves the
app's origin, every failed response, every console warning and error."""

from __future__ import annotations

from typing import Any


class PageWatch:
    """Listens to a Playwright page from before it loads."""

    def __init__(self, page: Any, origin: str) -> None:
        self.origin = origin
        self.outside: list[str] = []
        self.failed: list[str] = []
        self.console: list[str] = []
        page.on("request", self._request)
        page.on("requestfailed", lambda request: self.failed.append(f"failed {request.url}"))
        page.on("response", self._response)
        page.on("console", self._console)

    def _request(self, request: Any) -> None:
        if not request.url.startswith((self.origin, "data:", "blob:", "ws://127.0.0.1")):
            self.outside.append(request.url)

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.failed.append(f"{response.status} {response.url}")

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.console.append(message.text)
