"""Downloads: resume after a dropped connection, checksum mismatch kept aside, dead URLs,
gated files placed by hand."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from slade_core.data.download import fetch_source
from slade_core.data.errors import ChecksumError, DownloadError, MissingFileError
from slade_core.data.manifest import Source

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class _Handler(BaseHTTPRequestHandler):
    """Serves PAYLOAD; the first full request is cut off halfway. Honours Range."""

    requests_seen: list[str | None] = []

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path != "/file.bin":
            self.send_error(404)
            return
        rng = self.headers.get("Range")
        type(self).requests_seen.append(rng)
        if rng is None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        start = int(rng.removeprefix("bytes=").split("-")[0])
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Handler.requests_seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_resume_after_dropped_connection(server, tmp_path):
    source = Source(
        filename="file.bin",
        url=f"{server}/file.bin",
        sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        md5=hashlib.md5(PAYLOAD).hexdigest(),
    )
    path = fetch_source(source, tmp_path, backoff_s=0.01)
    assert path.read_bytes() == PAYLOAD
    first, resumed = _Handler.requests_seen
    assert first is None
    start = int(resumed.removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= len(PAYLOAD) // 2  # resumed from what was on disk, not from zero
    assert not (tmp_path / "file.bin.part").exists()
    # a second call finds the verified file and does not download again
    assert fetch_source(source, tmp_path) == path
    assert len(_Handler.requests_seen) == 2


def test_checksum_mismatch_keeps_file_aside(server, tmp_path):
    source = Source(filename="file.bin", url=f"{server}/file.bin", sha256="0" * 64)
    with pytest.raises(ChecksumError) as err:
        fetch_source(source, tmp_path, backoff_s=0.01)
    aside = list(tmp_path.glob("file.bin.bad-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == PAYLOAD
    assert str(aside[0]) in str(err.value) and "not deleted" in str(err.value)
    assert not (tmp_path / "file.bin").exists()


def test_dead_url_says_where_to_put_the_file(server, tmp_path):
    source = Source(filename="gone.tgz", url=f"{server}/gone.tgz", md5="0" * 32)
    with pytest.raises(DownloadError) as err:
        fetch_source(source, tmp_path, backoff_s=0.01)
    message = str(err.value)
    assert "HTTP 404" in message and str(tmp_path / "gone.tgz") in message


def test_unreachable_host_retries_then_fails(tmp_path):
    source = Source(filename="x.bin", url="http://127.0.0.1:9/x.bin")
    with pytest.raises(DownloadError, match="failed 2 times.*run again to resume"):
        fetch_source(source, tmp_path, retries=1, backoff_s=0.01, timeout_s=2)


def test_gated_file_is_requested_then_verified(tmp_path):
    data = b"archive bytes"
    source = Source(
        filename="nabirds.tar.gz",
        gated=True,
        md5=hashlib.md5(data).hexdigest(),
        instructions="register at https://example.org",
    )
    with pytest.raises(MissingFileError) as err:
        fetch_source(source, tmp_path)
    assert f"place it at: {tmp_path / 'nabirds.tar.gz'}" in str(err.value)
    assert "register at https://example.org" in str(err.value)
    (tmp_path / "nabirds.tar.gz").write_bytes(b"wrong bytes")
    with pytest.raises(ChecksumError):
        fetch_source(source, tmp_path)
    assert list(tmp_path.glob("nabirds.tar.gz.bad-*"))
    (tmp_path / "nabirds.tar.gz").write_bytes(data)
    assert fetch_source(source, tmp_path).read_bytes() == data
