"""Fetch one file (http/https URL, ``file://`` URL or local path) with retries, resume and a checksum.

HTTP downloads stream into ``<dest>.part`` while hashing (sha256), resume from that file with a
``Range`` request when the server answers ``206 Partial Content`` (and start again from zero when
it answers ``200``), retry connection errors and 5xx answers with exponential backoff, and rename
the finished file into place only when the checksum matches. ``dest`` therefore never holds a
partial or wrong file.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, BinaryIO

from tqdm import tqdm

from cxrclip.errors import CxrclipError

log = logging.getLogger(__name__)

USER_AGENT = "cxrclip-download (python-urllib)"
#: HTTP statuses worth another try (server trouble, rate limits); other 4xx fail at once.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
_OFFLINE_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN})
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_HASH_BLOCK = 1 << 20


class _RetryableError(Exception):
    """A transient failure: the download may succeed if tried again."""


def part_path(dest: Path) -> Path:
    """Where an unfinished download of ``dest`` is kept: ``<dest>.part``."""
    return dest.with_suffix(dest.suffix + ".part")


def sha256_file(path: Path, block_bytes: int = _HASH_BLOCK) -> str:
    """Hex sha256 of a file, read in blocks of ``block_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def _source_kind(url: str) -> str:
    """``http`` for http(s) URLs, ``file`` for file:// URLs, ``path`` for a plain (maybe relative) path."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        return "http"
    if scheme == "file":
        return "file"
    if scheme == "" or len(scheme) == 1:  # no scheme, or a Windows drive letter (C:\...)
        return "path"
    raise CxrclipError(
        f"unsupported URL scheme {scheme!r} in {url!r}: use https://, http://, file:// or a local path"
    )


def local_source(url: str) -> Path:
    """The file a ``file://`` URL or a plain path names (relative paths: relative to the cwd)."""
    if _source_kind(url) == "file":
        parts = urllib.parse.urlsplit(url)
        path = urllib.request.url2pathname(parts.path)
        if parts.netloc not in ("", "localhost"):
            path = f"//{parts.netloc}{path}"
        return Path(path)
    return Path(url).expanduser().absolute()


def unreachable_error(url: str, reason: str, param_key: str | None = None) -> CxrclipError:
    """The one error for a URL that cannot be fetched: what failed, and how to use a local copy."""
    key = param_key or "source.reports_url / source.images_url"
    return CxrclipError(
        f"cannot fetch {url}: {reason}. If this machine is offline or the URL has moved, get the file "
        f"another way and point {key} in params.yaml at the local copy: a path "
        "(e.g. /data/NLMCXR_reports.tgz, relative paths are relative to the project folder) or a "
        "file:// URL."
    )


def _checksum_error(url: str, expected: str, observed: str, param_key: str | None) -> CxrclipError:
    key = (param_key or "source.<reports|images>_url").replace("_url", "_sha256")
    return CxrclipError(
        f"sha256 mismatch for {url}: expected {expected}, got {observed}. The file was not kept. "
        f"Check the source, or set {key} to null in params.yaml to accept any content."
    )


def _record(url: str, dest: Path, n_bytes: int, sha256: str, resumed: bool, attempts: int) -> dict[str, Any]:
    return {
        "url": url,
        "path": str(dest),
        "bytes": int(n_bytes),
        "sha256": sha256,
        "resumed": bool(resumed),
        "attempts": int(attempts),
    }


def _copy_stream(
    src: BinaryIO, dst: BinaryIO, digest: Any, chunk_bytes: int, bar: tqdm
) -> int:
    """Copy ``src`` to ``dst`` in ``chunk_bytes`` blocks, updating ``digest`` and ``bar``; return bytes."""
    n = 0
    while chunk := src.read(chunk_bytes):
        dst.write(chunk)
        digest.update(chunk)
        n += len(chunk)
        bar.update(len(chunk))
    return n


def _finish(part: Path, dest: Path, url: str, observed: str, expected: str | None,
            param_key: str | None) -> None:
    """Move a complete ``part`` onto ``dest`` when its checksum is right; otherwise delete it and raise."""
    if expected and observed != expected:
        part.unlink(missing_ok=True)
        raise _checksum_error(url, expected, observed, param_key)
    os.replace(part, dest)


def _fetch_local(url: str, dest: Path, expected: str | None, chunk_bytes: int, progress: bool,
                 param_key: str | None) -> dict[str, Any]:
    src = local_source(url)
    if not src.is_file():
        raise unreachable_error(url, f"no such file: {src}", param_key)
    if src.resolve() == dest.resolve():
        raise CxrclipError(f"{url}: source and destination are the same file ({dest})")
    part = part_path(dest)
    digest = hashlib.sha256()
    size = src.stat().st_size
    with (
        open(src, "rb") as fin,
        open(part, "wb") as fout,
        tqdm(total=size, unit="B", unit_scale=True, desc=dest.name, disable=not progress) as bar,
    ):
        n = _copy_stream(fin, fout, digest, chunk_bytes, bar)
    observed = digest.hexdigest()
    _finish(part, dest, url, observed, expected, param_key)
    return _record(url, dest, n, observed, False, 1)


def _is_offline(reason: object) -> bool:
    """DNS failure or no route: the machine is offline; retrying will not help."""
    if isinstance(reason, socket.gaierror):
        return True
    return isinstance(reason, OSError) and reason.errno in _OFFLINE_ERRNOS


def _content_range_start(value: str | None) -> int | None:
    match = _CONTENT_RANGE.match(value or "")
    return int(match.group(1)) if match else None


def _http_attempt(url: str, part: Path, timeout_s: float, chunk_bytes: int, progress: bool,
                  desc: str) -> tuple[str, int, bool]:
    """One HTTP request: resume or (re)start ``part``; return (sha256, total bytes, resumed).

    Raises :class:`_RetryableError` for transient failures, :class:`urllib.error.HTTPError` and
    :class:`urllib.error.URLError` as raised by urllib.
    """
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        resumed = offset > 0 and resp.status == 206
        if resumed and _content_range_start(resp.headers.get("Content-Range")) != offset:
            part.unlink(missing_ok=True)
            raise _RetryableError(f"server resumed at the wrong offset ({resp.headers.get('Content-Range')})")
        if not resumed:
            offset = 0  # 200: the server sends the whole file; start from zero
        length_header = resp.headers.get("Content-Length")
        expected_body = int(length_header) if length_header and length_header.isdigit() else None
        digest = hashlib.sha256()
        if resumed:
            with open(part, "rb") as fh:
                while block := fh.read(_HASH_BLOCK):
                    digest.update(block)
        total = offset + expected_body if expected_body is not None else None
        with (
            open(part, "ab" if resumed else "wb") as fout,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=desc,
                 disable=not progress) as bar,
        ):
            try:
                received = _copy_stream(resp, fout, digest, chunk_bytes, bar)
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as exc:
                raise _RetryableError(f"connection lost mid-download ({exc!r})") from exc
        if expected_body is not None and received < expected_body:
            raise _RetryableError(f"connection closed after {received} of {expected_body} bytes")
    return digest.hexdigest(), offset + received, resumed


def _fetch_http(url: str, dest: Path, expected: str | None, retries: int, backoff_s: float,
                timeout_s: float, chunk_bytes: int, progress: bool,
                param_key: str | None) -> dict[str, Any]:
    part = part_path(dest)
    attempts = 0
    resumed_any = False
    while True:
        attempts += 1
        resumable = part.exists() and part.stat().st_size > 0
        try:
            observed, n_bytes, resumed = _http_attempt(url, part, timeout_s, chunk_bytes, progress, dest.name)
            resumed_any = resumed_any or resumed
            _finish(part, dest, url, observed, expected, param_key)
            return _record(url, dest, n_bytes, observed, resumed_any, attempts)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and resumable:  # our .part is not a prefix the server knows: restart
                part.unlink(missing_ok=True)
                failure = "HTTP 416 for a resume request; restarting from zero"
            elif exc.code in RETRY_STATUSES:
                failure = f"HTTP {exc.code} {exc.reason}"
            else:
                raise unreachable_error(url, f"HTTP {exc.code} {exc.reason}", param_key) from None
        except urllib.error.URLError as exc:
            if _is_offline(exc.reason):
                raise unreachable_error(url, f"network unreachable or host unknown ({exc.reason})",
                                        param_key) from None
            failure = f"connection failed ({exc.reason})"
        except (_RetryableError, http.client.HTTPException, ConnectionError, TimeoutError) as exc:
            failure = str(exc) or type(exc).__name__
        if attempts > retries:
            raise unreachable_error(url, f"gave up after {attempts} attempt(s); last error: {failure}",
                                    param_key)
        wait_s = backoff_s * 2 ** (attempts - 1)
        log.warning("%s: %s; retry %d/%d in %.1f s", url, failure, attempts, retries, wait_s)
        time.sleep(wait_s)


def fetch(
    url: str,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    chunk_bytes: int = 1 << 20,
    progress: bool = True,
    param_key: str | None = None,
) -> dict[str, Any]:
    """Download ``url`` (https/http/file URL or local path) to ``dest`` atomically.

    ``retries``: further attempts after the first on connection errors and HTTP 408/429/5xx, waiting
    ``backoff_s`` seconds, then twice as long each time; ``timeout_s``: socket timeout per request (s);
    ``chunk_bytes``: read size (bytes). DNS/offline failures and other 4xx answers (e.g. 404) fail at
    once with one :class:`CxrclipError` naming the URL and how to use a local copy (``param_key``:
    the params.yaml key to mention). When ``dest`` exists and matches ``expected_sha256`` nothing is
    fetched (``attempts`` 0).

    Returns ``{"url", "path", "bytes", "sha256", "resumed", "attempts"}``; ``resumed`` is True when
    bytes of an earlier ``.part`` file were kept.
    """
    dest = Path(dest)
    expected = expected_sha256.strip().lower() if expected_sha256 else None
    kind = _source_kind(url)
    if expected and dest.is_file():
        observed = sha256_file(dest)
        if observed == expected:
            log.info("%s already present with the expected sha256; not fetched again", dest)
            return _record(url, dest, dest.stat().st_size, observed, False, 0)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if kind in ("file", "path"):
        return _fetch_local(url, dest, expected, chunk_bytes, progress, param_key)
    return _fetch_http(url, dest, expected, retries, backoff_s, timeout_s, chunk_bytes, progress, param_key)
