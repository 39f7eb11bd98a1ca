"""Every byte ingest reads from a path or a URL goes through here.

One place holds the rules for where files may come from and how long and how much a
download may take, so every format (IIIF manifests and images, VIA files) obeys them.
"""

from __future__ import annotations

import hashlib
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from db.records import IMAGE_SUFFIXES

FETCH_TIMEOUT_S = 30.0
"""Per-request timeout for manifests and IIIF images."""


def cached_fetch(url: str, cache_dir: Path) -> Path:
    """The image at ``url``, downloaded once into ``cache_dir`` (named by URL hash)."""
    suffix = Path(urllib.parse.urlparse(url).path).suffix.lower()
    name = hashlib.sha256(url.encode()).hexdigest()[:24] + (suffix if suffix in IMAGE_SUFFIXES
                                                            else ".jpg")
    target = cache_dir / name
    if target.exists() and target.stat().st_size > 0:
        return target
    data = fetch_bytes(url)
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    partial.write_bytes(data)
    partial.replace(target)  # atomic: a killed ingest never leaves half an image in cache
    return target


def fetch_bytes(source: str) -> bytes:
    """Bytes of a local file or a URL (http, https, file), with a timeout.

    Raises:
        OSError: unreachable, HTTP error, or timeout, with the URL in the message.
    """
    if not is_url(source):
        try:
            return Path(source).read_bytes()
        except OSError as err:
            raise OSError(f"cannot read {source}: {err.strerror or err}") from err
    request = urllib.request.Request(source, headers={"User-Agent": "artminer-hitl"})
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            return response.read()
    except urllib.error.HTTPError as err:
        raise OSError(f"unreachable: HTTP {err.code} {err.reason} for {source}") from err
    except urllib.error.URLError as err:
        raise OSError(f"unreachable: {err.reason} for {source}") from err
    except TimeoutError as err:
        raise OSError(f"unreachable: no answer within {FETCH_TIMEOUT_S:.0f} s from "
                      f"{source}") from err


def is_url(text: str) -> bool:
    return urllib.parse.urlparse(text).scheme in ("http", "https", "file")


def load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err

