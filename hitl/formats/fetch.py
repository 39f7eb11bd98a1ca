"""Every byte ingest reads from a path or a URL goes through here.

One place holds the rules for where files may come from and how long and how much a
download may take, so every format (IIIF manifests and images, VIA files) obeys them:

* **Origins.** A source named by the user (command line, app) may be a local path, a
  ``file://`` URL or an http(s) URL. What a *document* names is held to its origin
  (`resolve_named`): a manifest fetched over http(s) may only name http(s) images; a
  local manifest may name http(s) images, or local files inside the folder it lives in
  (after following links), never elsewhere. Redirects are followed only to http(s).
* **Limits** (`FetchLimits`): a per-read timeout, a total deadline per download
  (enforced by a watchdog that closes the socket, so a server dripping a byte at a time
  cannot hold an ingest), and a size cap checked against ``Content-Length`` and while
  reading, so a huge body is never held in memory.
* **Failures** are `FetchError` (an `OSError`) or `ValueError` with one line naming the
  source; a truncated body or a JSON nested too deep is one of them, never a traceback.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import socket
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from db.records import IMAGE_SUFFIXES

FETCH_TIMEOUT_S = 30.0
"""Per-read timeout for manifests and IIIF images (kept for callers of the old name)."""

_CHUNK = 1 << 16
_MiB = 1 << 20


@dataclass(frozen=True)
class FetchLimits:
    """How long and how much one download may take.

    Attributes:
        timeout_s: longest wait for any one read (socket timeout); 30 s as before.
        deadline_s: longest a whole download may take, headers to last byte; 120 s lets
            a 256 MiB scan arrive over a slow (~20 Mbit/s) line.
        max_bytes: largest image file accepted; 256 MiB is above the largest museum
            TIFF downloads we have met (~200 MiB) and far below a memory problem.
        max_json_bytes: largest manifest or VIA file; 32 MiB holds a IIIF manifest of
            tens of thousands of canvases.
        max_redirects: redirects followed per download (urllib's default is 10).
    """

    timeout_s: float = FETCH_TIMEOUT_S
    deadline_s: float = 120.0
    max_bytes: int = 256 * _MiB
    max_json_bytes: int = 32 * _MiB
    max_redirects: int = 5


class FetchError(OSError):
    """A source that could not be read; the message names it and says why."""


# ---------------------------------------------------------------------- origins


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def is_remote(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https")


def local_path(source: str) -> Path:
    """The path of a local source: a bare path or a ``file://`` URL."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise FetchError(f"{source}: file URLs on other hosts are not read")
        return Path(urllib.request.url2pathname(parsed.path))
    return Path(source).expanduser()


def resolve_named(target: str, document: str) -> str:
    """Where a document (manifest, VIA file) may send us for ``target``; the rules above.

    Returns:
        An absolute http(s) URL, or the absolute path of a local file.

    Raises:
        FetchError: the document may not name that target.
    """
    scheme = urllib.parse.urlparse(target).scheme
    if is_remote(document):
        joined = urllib.parse.urljoin(document, target)
        if not is_remote(joined):
            raise FetchError(f"{target}: a manifest fetched over http(s) may only name "
                             "http(s) images")
        return joined
    if scheme in ("http", "https"):
        return target
    if scheme not in ("", "file"):
        raise FetchError(f"{target}: unsupported URL scheme {scheme!r}")
    folder = local_path(document).resolve().parent
    path = local_path(target)
    path = (path if path.is_absolute() else folder / path).resolve()
    if not path.is_relative_to(folder):
        raise FetchError(f"{target}: a local manifest may only name images in its own "
                         f"folder ({folder})")
    return str(path)


# ---------------------------------------------------------------------- reading


def fetch_bytes(source: str, limits: FetchLimits = FetchLimits(), *,
                max_bytes: int | None = None) -> bytes:
    """Bytes of a local file or a URL (http, https, file), within ``limits``.

    Args:
        source: path or URL.
        limits: timeouts and caps.
        max_bytes: size cap for this read (default ``limits.max_bytes``).

    Raises:
        FetchError: unreadable, unreachable, HTTP error, too slow or too large; the
            message names the source.
    """
    cap = limits.max_bytes if max_bytes is None else max_bytes
    if not is_remote(source):
        return _read_local(source, cap)
    return _download(source, limits, cap)


def fetch_json(source: str, limits: FetchLimits = FetchLimits()) -> Any:
    """A JSON document from a path or URL, with the JSON size cap."""
    return load_json(fetch_bytes(source, limits, max_bytes=limits.max_json_bytes), source)


def load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err
    except RecursionError as err:  # json's C parser recurses per nesting level
        raise ValueError(f"{where}: JSON nested too deeply to read") from err


def _read_local(source: str, cap: int) -> bytes:
    path = local_path(source)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO or /dev/zero would never end
            raise FetchError(f"cannot read {source}: not a regular file")
        if info.st_size > cap:
            raise FetchError(f"{source}: {info.st_size / _MiB:.1f} MiB is over the "
                             f"{cap / _MiB:.0f} MiB limit")
        with open(path, "rb") as f:
            data = f.read(cap + 1)
        if len(data) > cap:  # grew since stat
            raise FetchError(f"{source}: over the {cap / _MiB:.0f} MiB limit")
        return data
    except FetchError:
        raise
    except OSError as err:
        prefix = "unreachable: " if is_url(source) else ""  # as for an http URL
        raise FetchError(f"{prefix}cannot read {source}: {err.strerror or err}") from err


def _download(url: str, limits: FetchLimits, cap: int) -> bytes:
    watchdog = _Watchdog(limits.deadline_s)
    request = urllib.request.Request(url, headers={"User-Agent": "artminer-hitl"})
    try:
        with watchdog, _opener(watchdog, limits).open(request, timeout=limits.timeout_s) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cap:
                raise FetchError(f"{url}: {int(length) / _MiB:.1f} MiB announced, over the "
                                 f"{cap / _MiB:.0f} MiB limit")
            return _read_body(response, url, cap, watchdog)
    except FetchError:
        raise
    except urllib.error.HTTPError as err:
        raise FetchError(f"unreachable: HTTP {err.code} {err.reason} for {url}") from err
    except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
        if watchdog.expired:
            raise FetchError(f"{url}: not complete within the {limits.deadline_s:g} s "
                             "download deadline") from err
        if isinstance(err, TimeoutError | socket.timeout):
            raise FetchError(f"unreachable: no answer within {limits.timeout_s:g} s from "
                             f"{url}") from err
        if isinstance(err, http.client.IncompleteRead):
            raise FetchError(f"{url}: truncated answer ({len(err.partial)} bytes, more "
                             "announced)") from err
        reason = getattr(err, "reason", None) or err
        raise FetchError(f"unreachable: {reason} for {url}") from err


def _read_body(response: Any, url: str, cap: int, watchdog: _Watchdog) -> bytes:
    """Read in chunks (``read1`` returns what has arrived), checking cap and deadline."""
    parts, size = [], 0
    while True:
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        size += len(chunk)
        if size > cap:
            raise FetchError(f"{url}: body over the {cap / _MiB:.0f} MiB limit")
        if watchdog.expired:
            raise TimeoutError("deadline")
        parts.append(chunk)
    if watchdog.expired:  # the watchdog closed the socket: EOF is not the end of the body
        raise TimeoutError("deadline")
    missing = getattr(response, "length", None)  # what Content-Length still promised
    if missing:  # read1 ends quietly at EOF where read() would raise IncompleteRead
        raise FetchError(f"{url}: truncated answer ({size} bytes, {missing} more announced)")
    return b"".join(parts)


class _Watchdog:
    """Closes every socket of one download when its deadline passes."""

    def __init__(self, deadline_s: float):
        self.deadline_s = deadline_s
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(deadline_s, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
            if self.expired:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv with EOF
    except OSError:
        pass


def _opener(watchdog: _Watchdog, limits: FetchLimits) -> urllib.request.OpenerDirector:
    """http(s) only, every connection watched, redirects only to http(s)."""

    class Watched(http.client.HTTPConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class WatchedTLS(http.client.HTTPSConnection):
        def connect(self) -> None:
            super().connect()
            watchdog.watch(self.sock)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(Watched, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(WatchedTLS, req, context=self._context)

    class Redirect(urllib.request.HTTPRedirectHandler):
        max_redirections = limits.max_redirects

        def redirect_request(self, req, fp, code, msg, headers, newurl):
            if not is_remote(urllib.parse.urljoin(req.full_url, newurl)):
                raise FetchError(f"{req.full_url}: redirect to {newurl} refused (http(s) only)")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler(),  # http(s)_proxy from the environment
                    HTTP(), HTTPS(), Redirect(), urllib.request.HTTPDefaultErrorHandler(),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


# ---------------------------------------------------------------------- image cache


def cached_fetch(source: str, cache_dir: Path, limits: FetchLimits = FetchLimits()) -> Path:
    """The image at ``source``, copied once into ``cache_dir`` (named by source hash).

    A local source's copy keeps the source's permission bits at most, so a private file
    never becomes world-readable by being cached.
    """
    suffix = Path(urllib.parse.urlparse(source).path).suffix.lower()
    name = hashlib.sha256(source.encode()).hexdigest()[:24] + (suffix if suffix in IMAGE_SUFFIXES
                                                               else ".jpg")
    target = cache_dir / name
    if target.exists() and target.stat().st_size > 0:
        return target
    data = fetch_bytes(source, limits)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    if not is_remote(source):
        mode = stat.S_IMODE(local_path(source).stat().st_mode)
        os.chmod(partial, stat.S_IMODE(partial.stat().st_mode) & mode)
    partial.replace(target)  # atomic: a killed ingest never leaves half an image in cache
    return target


__all__ = ["FETCH_TIMEOUT_S", "FetchError", "FetchLimits", "cached_fetch", "fetch_bytes",
           "fetch_json", "is_remote", "is_url", "load_json", "local_path", "resolve_named"]
