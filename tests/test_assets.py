"""Asset resolution: the LLAMA2_ET_DATA folder, and real downloads from a loopback HTTP server."""

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llama2_et import assets

PAYLOAD = bytes(range(256)) * 400


class RangeHandler(BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring 'Range: bytes=N-' like a real CDN; counts bytes sent."""

    sent: list[int] = []

    def do_GET(self):
        start = int(self.headers.get("Range", "bytes=0-")[6:-1] or 0)
        body = PAYLOAD[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.sent.append(len(body))

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    RangeHandler.sent = []
    yield f"http://127.0.0.1:{httpd.server_port}/file.bin"
    httpd.shutdown()


def test_download_checks_sha256_and_resumes(tmp_path, server):
    good = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "file.bin"
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])  # an interrupted earlier download
    assert assets.download(server, dest, good).read_bytes() == PAYLOAD
    assert RangeHandler.sent == [len(PAYLOAD) - 1000]  # only the rest was fetched
    with pytest.raises(ValueError, match="does not match"):
        assets.download(server, tmp_path / "other.bin", "0" * 64)
    assert not (tmp_path / "other.bin").exists()


def test_offline_download_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="LLAMA2_ET_DATA"):
        assets.download("http://127.0.0.1:9/none.bin", tmp_path / "none.bin")


def test_data_folder_override(tmp_path, monkeypatch, data_dir):
    assert assets.resolve_checkpoint("stories260K") == data_dir / "stories260K.bin"
    assert assets.resolve_tokenizer("stories260K", "bin") == data_dir / "tok512.bin"
    assert assets.resolve_tokenizer("llama2") == data_dir / "tokenizer.model"
    assert assets.sha256_of(data_dir / "stories260K.bin") == assets.ASSETS["stories260K.bin"].sha256
    monkeypatch.setenv("LLAMA2_ET_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"must hold stories260K.bin \(get it from https://"):
        assets.resolve_checkpoint("stories260K")
    with pytest.raises(FileNotFoundError, match="neither an existing path nor a preset"):
        assets.resolve_checkpoint("stories1B")
