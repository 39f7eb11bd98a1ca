"""A loopback HTTP server that misbehaves on purpose, for ingest's attack tests and benchmark.

Routes (any path prefix):

``/drip/...``       headers, then one byte every ``drip_s`` seconds, forever.
``/huge/...``       ``Content-Length`` of 1.5 GB announced, then zeros until the client hangs up.
``/stream/...``     no ``Content-Length`` and zeros until the client hangs up (counts bytes sent).
``/truncated/...``  announces 10,000 bytes, sends 100, closes.
``/redirect-file/`` 302 to ``file:///etc/passwd``.
``/deep.json``      a JSON array nested 100,000 levels deep.
``/files/<name>``   the bytes registered in ``server.files[name]``.
"""

from __future__ import annotations

import http.server
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        server = self.server
        path = self.path
        try:
            if path.startswith("/drip/"):
                self._head(200, "application/json", None)
                while not server.stopping.is_set():
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(server.drip_s)
            elif path.startswith(("/huge/", "/stream/")):
                self._head(200, "image/jpeg", 1_500_000_000 if path.startswith("/huge/") else None)
                block = b"\0" * (1 << 16)
                while not server.stopping.is_set():
                    self.wfile.write(block)
                    server.sent[path] = server.sent.get(path, 0) + len(block)
            elif path.startswith("/truncated/"):
                self._head(200, "application/json", 10_000)
                self.wfile.write(b'{"@context": "' + b"x" * 86)
                self.wfile.flush()
                self.close_connection = True
            elif path.startswith("/redirect-file/"):
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif path == "/deep.json":
                body = b"[" * 100_000 + b"]" * 100_000
                self._head(200, "application/json", len(body))
                self.wfile.write(body)
            elif path.startswith("/files/") and path[7:] in server.files:
                body = server.files[path[7:]]
                self._head(200, "application/octet-stream", len(body))
                self.wfile.write(body)
            else:
                self.send_error(404)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up: that is the point of most routes

    def _head(self, code: int, kind: str, length: int | None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        if length is not None:
            self.send_header("Content-Length", str(length))
        else:
            self.send_header("Connection", "close")
        self.end_headers()


@contextmanager
def hostile_server(drip_s: float = 0.5) -> Iterator[http.server.ThreadingHTTPServer]:
    """Serve on 127.0.0.1 (free port); ``server.base`` is its URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.drip_s = drip_s
    httpd.stopping = threading.Event()
    httpd.sent = {}
    httpd.files = {}
    httpd.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.stopping.set()
        httpd.shutdown()
        httpd.server_close()


def png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid PNG declaring ``width`` x ``height`` pixels in a few hundred KB at most.

    The IDAT holds one compressed row (a real bomb holds all of them as zeros, which
    compress ~1000:1); readers that check the header before decoding never notice.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * (1 + 3 * width))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
                     + chunk(b"IEND", b""))
    return path
