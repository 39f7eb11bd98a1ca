"""The app-root script reaches every HTML page, and nothing else is touched."""

from __future__ import annotations

import asyncio
import gzip

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from hitl.page_urls import AppRootScript, inject_root, is_page_request, root_script

PAGE = "<html><head><title>t</title></head><body>" + "x" * 2000 + "</body></html>"


def test_script_names_the_root_with_or_without_a_base_path():
    assert b'new URL("/", window.location.origin)' in root_script("")
    assert b'new URL("/artminer/", window.location.origin)' in root_script("/artminer/")
    assert b"BACKEND_BASE_URL" in root_script() and b"MAIN_PAGE_BASE_URL" in root_script()


def test_injected_first_in_head_and_only_there():
    html = inject_root(PAGE.encode())
    assert html.startswith(b"<html><head><script>window.__streamlit") and html.endswith(PAGE.encode()[12:])
    assert inject_root(b"no head here") == b"no head here"


def test_page_requests_are_told_from_endpoints_and_files():
    def scope(path: str, method: str = "GET") -> dict:
        return {"type": "http", "method": method, "path": path}

    assert all(is_page_request(scope(p)) for p in ("/", "/map", "/review/", "/artminer/map"))
    assert not any(is_page_request(scope(p)) for p in (
        "/_stcore/health", "/map/_stcore/host-config", "/static/js/index.js", "/favicon.png",
        "/media/abc.jpg", "/component/x/index.html"))
    assert not is_page_request(scope("/map", "POST")) and not is_page_request({"type": "websocket", "path": "/"})


def _get(app, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    """One GET through the ASGI app (gzip accepted, as a browser asks)."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"test"), (b"accept-encoding", b"gzip")], "client": ("127.0.0.1", 1),
             "server": ("test", 80)}
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def test_middleware_edits_html_pages_only():
    async def page(request):
        return HTMLResponse(PAGE)

    async def health(request):
        return JSONResponse({"ok": True})

    app = Starlette(routes=[Route("/map", page), Route("/_stcore/health", health)],
                    middleware=[Middleware(AppRootScript, base_path=lambda: "artminer"), Middleware(GZipMiddleware)])
    status, headers, body = _get(app, "/map")
    assert status == 200 and body.startswith(b"<html><head><script>window.__streamlit")
    assert b'"/artminer/"' in body and int(headers[b"content-length"]) == len(body)
    status, headers, body = _get(app, "/_stcore/health")  # untouched, still compressed
    assert status == 200 and headers.get(b"content-encoding") in (None, b"gzip")
    assert (gzip.decompress(body) if headers.get(b"content-encoding") == b"gzip" else body) == b'{"ok":true}'
