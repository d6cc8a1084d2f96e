"""cxrclip.data.download.fetch and `cxrclip download` against a loopback HTTP server (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from cxrclip.cli import main as cli_main
from cxrclip.data import download
from cxrclip.data.download import fetch, part_path
from cxrclip.errors import CxrclipError

PAYLOAD = bytes(range(256)) * 1200  # 307,200 bytes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
FAST = {"retries": 3, "backoff_s": 0.01, "timeout_s": 5.0, "chunk_bytes": 8192, "progress": False}


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to the loopback server (and fail DNS) directly, whatever proxy the environment sets."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@dataclass
class ServerState:
    """What the loopback server does; ``requests`` records each GET's Range header ("" if none)."""

    payload: bytes = PAYLOAD
    support_range: bool = True
    fail_first: int = 0  # answer this many requests with 503
    drop_once_after: int | None = None  # first full-body answer closes the connection after N bytes
    requests: list[str] = field(default_factory=list)


def _handler(state: ServerState) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # keep test output quiet
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            state.requests.append(self.headers.get("Range", ""))
            if self.path != "/NLMCXR_reports.tgz":
                self.send_error(404, "Not Found")
                return
            if len(state.requests) <= state.fail_first:
                self.send_error(503, "Service Unavailable")
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and state.support_range:
                start = int(rng.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(state.payload) - 1}/{len(state.payload)}")
            else:
                self.send_response(200)
            body = state.payload[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if state.drop_once_after is not None:
                cut, state.drop_once_after = state.drop_once_after, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True  # the client sees a short body
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    """A threaded HTTP server on 127.0.0.1 (ephemeral port); yields (base URL, state); shut down after."""
    state = ServerState()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_http_download_streams_whole_file_and_records_sha256(server, tmp_path):
    base, state = server
    dest = tmp_path / "raw" / "NLMCXR_reports.tgz"
    record = fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=None, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert record == {"url": f"{base}/NLMCXR_reports.tgz", "path": str(dest), "bytes": len(PAYLOAD),
                      "sha256": PAYLOAD_SHA, "resumed": False, "attempts": 1}
    assert not part_path(dest).exists()


def test_503_answers_are_retried_with_backoff_until_success(server, tmp_path):
    base, state = server
    state.fail_first = 2
    record = fetch(f"{base}/NLMCXR_reports.tgz", tmp_path / "a.tgz", expected_sha256=PAYLOAD_SHA, **FAST)
    assert record["attempts"] == 3
    assert (tmp_path / "a.tgz").read_bytes() == PAYLOAD


def test_persistent_503_gives_up_after_retries_with_one_clear_error(server, tmp_path):
    base, state = server
    state.fail_first = 100
    with pytest.raises(CxrclipError, match=r"gave up after 3 attempt.*HTTP 503.*point source.reports_url"):
        fetch(f"{base}/NLMCXR_reports.tgz", tmp_path / "a.tgz", expected_sha256=None,
              **{**FAST, "retries": 2}, param_key="source.reports_url")
    assert len(state.requests) == 3
    assert not (tmp_path / "a.tgz").exists()


def test_connection_dropped_mid_body_resumes_with_range(server, tmp_path):
    base, state = server
    state.drop_once_after = 100_000
    dest = tmp_path / "a.tgz"
    record = fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=PAYLOAD_SHA, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert record["resumed"] is True and record["attempts"] == 2 and record["sha256"] == PAYLOAD_SHA
    assert state.requests == ["", "bytes=100000-"]


def test_existing_part_file_is_resumed_from_its_size(server, tmp_path):
    base, state = server
    dest = tmp_path / "a.tgz"
    part_path(dest).write_bytes(PAYLOAD[:12345])
    record = fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=PAYLOAD_SHA, **FAST)
    assert state.requests == ["bytes=12345-"]
    assert record["resumed"] is True and record["bytes"] == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


def test_server_without_range_support_restarts_from_zero(server, tmp_path):
    base, state = server
    state.support_range = False
    dest = tmp_path / "a.tgz"
    part_path(dest).write_bytes(b"stale bytes from another file")
    record = fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=PAYLOAD_SHA, **FAST)
    assert record["resumed"] is False
    assert dest.read_bytes() == PAYLOAD


def test_404_fails_at_once_naming_url_and_local_copy_advice(server, tmp_path):
    base, state = server
    url = f"{base}/missing.tgz"
    with pytest.raises(CxrclipError) as info:
        fetch(url, tmp_path / "a.tgz", expected_sha256=None, **FAST, param_key="source.images_url")
    message = str(info.value)
    assert url in message and "404" in message
    assert "source.images_url" in message and "file://" in message
    assert len(state.requests) == 1  # no retries on 404
    assert not (tmp_path / "a.tgz").exists()


def test_unknown_host_fails_at_once_with_the_same_advice(tmp_path, monkeypatch):
    def no_retry(seconds: float) -> None:
        raise AssertionError(f"retried (sleep {seconds}) although the host does not resolve")

    monkeypatch.setattr(download.time, "sleep", no_retry)
    with pytest.raises(CxrclipError, match=r"cannot fetch https://cxrclip-test\.invalid/x\.tgz.*file://"):
        fetch("https://cxrclip-test.invalid/x.tgz", tmp_path / "x.tgz", expected_sha256=None, **FAST)


def test_sha_mismatch_names_both_hashes_and_keeps_no_file(server, tmp_path):
    base, _ = server
    dest = tmp_path / "a.tgz"
    wrong = "0" * 64
    with pytest.raises(CxrclipError) as info:
        fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=wrong, **FAST)
    assert wrong in str(info.value) and PAYLOAD_SHA in str(info.value)
    assert not dest.exists() and not part_path(dest).exists()


def test_failed_download_leaves_no_file_at_dest_only_the_part(server, tmp_path):
    base, state = server
    state.drop_once_after = 5000
    state.support_range = False
    dest = tmp_path / "a.tgz"
    with pytest.raises(CxrclipError, match="connection closed after 5000 of"):
        fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=None, **{**FAST, "retries": 0})
    assert not dest.exists()
    assert part_path(dest).stat().st_size == 5000  # kept for a later resume


def test_failed_download_keeps_previous_file_at_dest_untouched(server, tmp_path):
    base, state = server
    state.fail_first = 100
    dest = tmp_path / "a.tgz"
    dest.write_bytes(b"previous complete file")
    with pytest.raises(CxrclipError):
        fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=PAYLOAD_SHA, **{**FAST, "retries": 1})
    assert dest.read_bytes() == b"previous complete file"


def test_existing_dest_with_expected_sha_is_not_fetched_again(server, tmp_path):
    base, state = server
    dest = tmp_path / "a.tgz"
    dest.write_bytes(PAYLOAD)
    record = fetch(f"{base}/NLMCXR_reports.tgz", dest, expected_sha256=PAYLOAD_SHA.upper(), **FAST)
    assert record["attempts"] == 0 and record["sha256"] == PAYLOAD_SHA
    assert state.requests == []


def test_file_url_and_relative_plain_path_are_copied(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / "NLMCXR_reports.tgz"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    rec_url = fetch(src.as_uri(), tmp_path / "out1.tgz", expected_sha256=PAYLOAD_SHA, **FAST)
    monkeypatch.chdir(tmp_path)
    rec_path = fetch("mirror/NLMCXR_reports.tgz", Path("out2.tgz"), expected_sha256=None, **FAST)
    assert (tmp_path / "out1.tgz").read_bytes() == PAYLOAD == (tmp_path / "out2.tgz").read_bytes()
    assert rec_url["sha256"] == rec_path["sha256"] == PAYLOAD_SHA
    assert rec_path["bytes"] == len(PAYLOAD)


def test_missing_local_path_is_one_clear_error(tmp_path):
    with pytest.raises(CxrclipError, match=r"cannot fetch .*nothing\.tgz: no such file.*params\.yaml"):
        fetch(str(tmp_path / "nothing.tgz"), tmp_path / "out.tgz", expected_sha256=None, **FAST)


def _write_params(workdir: Path, **source: object) -> Path:
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["source"].update(source)
    params["download"].update({"retries": 1, "backoff_s": 0.01, "timeout_s": 5})
    path = workdir / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_cli_download_writes_both_archives_and_record(server, tmp_path):
    base, _ = server
    images = tmp_path / "png.tgz"
    images.write_bytes(b"png archive bytes")
    params = _write_params(tmp_path, reports_url=f"{base}/NLMCXR_reports.tgz", images_url=str(images),
                           reports_sha256=PAYLOAD_SHA)
    out = tmp_path / "raw"
    assert cli_main(["download", "--params", str(params), "--out-dir", str(out), "--no-progress"]) == 0
    record = json.loads((out / "download.json").read_text())
    assert (out / "NLMCXR_reports.tgz").read_bytes() == PAYLOAD
    assert (out / "NLMCXR_png.tgz").read_bytes() == b"png archive bytes"
    assert record["reports"]["sha256"] == PAYLOAD_SHA
    assert record["images"]["sha256"] == hashlib.sha256(b"png archive bytes").hexdigest()


def test_cli_download_in_kaggle_mode_explains_kaggle_dir(tmp_path, capsys):
    params = _write_params(tmp_path, kind="kaggle", kaggle_dir="data/kaggle")
    assert cli_main(["download", "--params", str(params), "--out-dir", str(tmp_path / "raw")]) == 2
    err = capsys.readouterr().err
    assert "source.kaggle_dir" in err and "Traceback" not in err
    assert not (tmp_path / "raw").exists()


def test_cli_download_404_exits_2_without_traceback(server, tmp_path, capsys):
    base, _ = server
    params = _write_params(tmp_path, reports_url=f"{base}/gone.tgz")
    assert cli_main(["download", "--params", str(params), "--out-dir", str(tmp_path / "raw"),
                     "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{base}/gone.tgz" in err and "source.reports_url" in err and "Traceback" not in err
