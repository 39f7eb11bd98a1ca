"""Page URLs that open cleanly: ``http://host:port/map`` with no 404 on the way.

Streamlit's page does not know where the app's root is. Opened at ``/map`` it guesses:
first ``/map`` itself (asking ``/map/_stcore/health`` and ``/map/_stcore/host-config``,
two 404s), then ``/`` (streamlit/streamlit#7074, open). Its frontend reads the root from
``window.__streamlit.BACKEND_BASE_URL`` (and the page paths from ``MAIN_PAGE_BASE_URL``)
when a page sets it before the frontend starts, so :class:`AppRootScript`, an ASGI
middleware run in front of Streamlit (``streamlit_asgi.py``: ``st.App(middleware=...)``),
writes that into every HTML page it serves. No other request is touched.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Requests for Streamlit's own endpoints and files, never an HTML page of the app.
_NOT_PAGES = ("/_stcore/", "/static/", "/media/", "/component/", "/app/static/", "/favicon")


def root_script(base_path: str = "") -> bytes:
    """The ``<script>`` that tells Streamlit's frontend the app's root URL.

    Args:
        base_path: Streamlit's ``server.baseUrlPath`` ("" or e.g. ``"artminer"``).
    """
    root = "/" + "/".join(p for p in base_path.split("/") if p) + "/"
    root = root.replace("//", "/")
    return ("<script>window.__streamlit = Object.assign({}, window.__streamlit, "
            f"{{BACKEND_BASE_URL: new URL({json.dumps(root)}, window.location.origin).href, "
            f"MAIN_PAGE_BASE_URL: new URL({json.dumps(root)}, window.location.origin).href}});</script>"
            ).encode()


def inject_root(html: bytes, base_path: str = "") -> bytes:
    """``html`` with :func:`root_script` first in its ``<head>`` (unchanged without one)."""
    at = html.find(b"<head>")
    if at < 0:
        return html
    at += len(b"<head>")
    return html[:at] + root_script(base_path) + html[at:]


def is_page_request(scope: Scope) -> bool:
    """A GET of something that may be the app's HTML (a page path, not an endpoint or file)."""
    if scope.get("type") != "http" or scope.get("method") != "GET":
        return False
    path = scope.get("path", "/")
    last = path.rstrip("/").rsplit("/", 1)[-1]
    return "." not in last and not any(part in path for part in _NOT_PAGES)


class AppRootScript:
    """ASGI middleware: every HTML page of the app learns the app's root (see module doc).

    Args:
        app: the ASGI app behind (Streamlit's).
        base_path: returns Streamlit's ``server.baseUrlPath``, read per request (the
            config is loaded after the middleware is built).
    """

    def __init__(self, app: ASGIApp, base_path: Callable[[], str] = lambda: "") -> None:
        self.app = app
        self.base_path = base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not is_page_request(scope):
            await self.app(scope, receive, send)
            return
        # Ask for the plain body (no gzip) so it can be edited; pages are a few kB.
        headers = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"accept-encoding"]
        start: Message = {}
        chunks: list[bytes] = []

        async def edit(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
                return
            if message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body"):
                return
            body = b"".join(chunks)
            head = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
            if any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in head):
                body = inject_root(body, self.base_path() or "")
            await send({**start, "headers": head + [(b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})

        await self.app({**scope, "headers": headers}, receive, edit)
