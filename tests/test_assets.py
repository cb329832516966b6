"""Asset resolution: the LLAMA2_ET_DATA folder, and real downloads from a loopback HTTP server."""

import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llama2_et import assets
from llama2_et.__main__ import main
from llama2_et.data import SAMPLE, read_stories, resolve_stories
from llama2_et.train_config import TrainConfig

PAYLOAD = bytes(range(256)) * 400


class RangeHandler(BaseHTTPRequestHandler):
    """Serves payload, honouring 'Range: bytes=N-' like a real CDN; counts bytes sent.

    With `cut` set, it announces the whole body but sends only `cut` bytes, then hangs up.
    """

    sent: list[int] = []
    payload = PAYLOAD
    cut: int | None = None

    def do_GET(self):
        start = int(self.headers.get("Range", "bytes=0-")[6:-1] or 0)
        body = self.payload[start:]
        self.sent.append(len(body))  # before sending: the client may finish before this thread resumes
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: self.cut])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    RangeHandler.sent, RangeHandler.payload, RangeHandler.cut = [], PAYLOAD, None
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


def test_a_cut_download_is_kept_for_resuming_and_never_becomes_the_file(tmp_path, server):
    RangeHandler.cut = 5000
    with pytest.raises(FileNotFoundError, match=f"stopped at 5,000 of {len(PAYLOAD):,} bytes; run again"):
        assets.download(server, tmp_path / "file.bin")
    assert not (tmp_path / "file.bin").exists() and (tmp_path / "file.bin.part").stat().st_size == 5000
    RangeHandler.cut = None
    assert assets.download(server, tmp_path / "file.bin").read_bytes() == PAYLOAD
    assert RangeHandler.sent == [len(PAYLOAD), len(PAYLOAD) - 5000]


def test_training_data_without_a_data_folder_is_the_published_tinystories_valid(
    tmp_path, monkeypatch, server, data_dir
):
    assert TrainConfig().data == SAMPLE  # LLAMA2_ET_DATA holds the sample: tests and CI train on it
    monkeypatch.delenv("LLAMA2_ET_DATA")
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path / "cache"))
    name = TrainConfig().data
    asset = assets.ASSETS[name]
    assert (
        asset.url
        == "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt"
    )
    stories = "Spot ran to the park.\n<|endoftext|>\nLily found a red ball. She was happy.\n<|endoftext|>\n"
    RangeHandler.payload = stories.encode()
    monkeypatch.setitem(assets.ASSETS, name, dataclasses.replace(asset, url=server))  # the loopback "Hub"
    path = resolve_stories(name)
    assert path == tmp_path / "cache" / "TinyStories-valid.txt"
    assert read_stories(path) == ["Spot ran to the park.", "Lily found a red ball. She was happy."]
    assert resolve_stories(name) == path and RangeHandler.sent == [len(stories)]  # cached: fetched once


@pytest.mark.slow  # a training run
def test_train_command_without_a_data_folder_downloads_tinystories_valid_and_trains(
    tmp_path, monkeypatch, server, data_dir, capsys
):
    """`python -m llama2_et train` with LLAMA2_ET_DATA unset: the published file, from a loopback "Hub"."""
    stories = read_stories(data_dir / SAMPLE)[:100]
    RangeHandler.payload = "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode()
    name = "TinyStories-valid.txt"
    monkeypatch.setitem(assets.ASSETS, name, dataclasses.replace(assets.ASSETS[name], url=server))
    monkeypatch.delenv("LLAMA2_ET_DATA")
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path / "cache"))
    tiny = "--dim 16 --n-layers 1 --n-heads 2 --n-kv-heads 1 --multiple-of 8 --max-seq-len 32".split()
    steps = "--max-steps 2 --warmup-steps 0 --eval-interval 2 --eval-windows 2 --batch-size 2".split()
    out_dir = tmp_path / "out"
    tokenizer = str(data_dir / "tok512.model")
    assert main(["train", "--out-dir", str(out_dir), "--tokenizer", tokenizer, *tiny, *steps]) == 0
    assert RangeHandler.sent == [len(RangeHandler.payload)]  # downloaded once, into the cache
    assert (tmp_path / "cache" / name).read_bytes() == RangeHandler.payload
    manifest = json.loads((out_dir / "data" / "manifest.json").read_text())
    assert [Path(f).name for f, *_ in manifest["recipe"]["files"]] == [name]
    assert manifest["prepared"]["train_stories"] + manifest["prepared"]["val_stories"] == 100
    assert "greedy sample from" in capsys.readouterr().out


def test_chapter_dir_is_keyed_by_the_package_source(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path))
    first = assets.chapter_dir()
    assert first.is_dir() and first.parent == tmp_path / "chapters"
    assert assets.chapter_dir() == first  # same source, same folder
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "model.py").write_text("x = 1\n")
    monkeypatch.setattr(assets, "__file__", str(package / "assets.py"))
    other = assets.chapter_dir()
    (package / "model.py").write_text("x = 2\n")
    assert assets.chapter_dir() != other  # an edited source never reuses an older build
