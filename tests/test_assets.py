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


def test_cut_after_last_story_drops_the_truncated_story(tmp_path):
    text = b"Spot ran.\n<|endoftext|>\nLily found a ball.\n<|endoftext|>\n\nTom was ha"
    assert assets.cut_after_last_story(text) == text[: text.rindex(b"\n\nTom") + 1]
    with pytest.raises(ValueError, match="no complete story"):
        assets.cut_after_last_story(b"Tom was ha")
    source = tmp_path / "sample.source"
    source.write_bytes(text)
    cut = assets.cut_after_last_story(text)
    good = hashlib.sha256(cut).hexdigest()
    with pytest.raises(ValueError, match="run again to download its source again"):
        assets.derive_file(source, tmp_path / "sample.txt", assets.cut_after_last_story, "0" * 64)
    assert not (tmp_path / "sample.txt").exists() and not source.exists()  # nothing kept of a bad source
    source.write_bytes(text)
    assert (
        assets.derive_file(source, tmp_path / "sample.txt", assets.cut_after_last_story, good).read_bytes()
        == cut
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sample.source", "sample.txt"]  # no temporary left


def test_training_data_without_a_data_folder_is_the_sample_cut_from_its_published_source(
    tmp_path, monkeypatch, server, data_dir
):
    assert TrainConfig().data == SAMPLE
    asset = assets.ASSETS[SAMPLE]
    assert asset.url == (
        "https://raw.githubusercontent.com/gusjengis/toy-RNN/"
        "e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e/data/tinystories_sample.txt"
    )
    sample = (data_dir / SAMPLE).read_bytes()
    assert assets.sha256_of(data_dir / SAMPLE) == asset.sha256
    # the published 2,097,152 bytes: the sample, then the start of a story the byte range cuts off
    published = sample + b"\nLily was very happy. Today was her birthday."
    RangeHandler.payload = published + b" " * (2_097_152 - len(published))
    monkeypatch.setitem(
        assets.ASSETS, SAMPLE, dataclasses.replace(asset, url=server)
    )  # the loopback "GitHub"
    monkeypatch.delenv("LLAMA2_ET_DATA")
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path / "cache"))
    path = resolve_stories(SAMPLE)
    assert path == tmp_path / "cache" / SAMPLE and path.read_bytes() == sample  # the same bytes
    assert sorted(p.name for p in path.parent.iterdir()) == [SAMPLE]  # the source is not kept
    assert resolve_stories(SAMPLE) == path and RangeHandler.sent == [2_097_152]  # cached: fetched once


@pytest.mark.slow  # a training run
def test_train_command_without_a_data_folder_downloads_the_sample_and_trains(
    tmp_path, monkeypatch, server, data_dir, capsys
):
    """`python -m llama2_et train` with LLAMA2_ET_DATA unset: the sample, from a loopback "GitHub"."""
    stories = read_stories(data_dir / SAMPLE)[:100]
    cut = "".join(f"{story}\n<|endoftext|>\n" for story in stories).encode()
    RangeHandler.payload = cut + b"Once upon a ti"
    sha256 = hashlib.sha256(cut).hexdigest()
    monkeypatch.setitem(
        assets.ASSETS, SAMPLE, dataclasses.replace(assets.ASSETS[SAMPLE], url=server, sha256=sha256)
    )
    monkeypatch.delenv("LLAMA2_ET_DATA")
    monkeypatch.setenv("LLAMA2_ET_CACHE", str(tmp_path / "cache"))
    tiny = "--dim 16 --n-layers 1 --n-heads 2 --n-kv-heads 1 --multiple-of 8 --max-seq-len 32".split()
    steps = "--max-steps 2 --warmup-steps 0 --eval-interval 2 --eval-windows 2 --batch-size 2".split()
    out_dir = tmp_path / "out"
    tokenizer = str(data_dir / "tok512.model")
    assert main(["train", "--out-dir", str(out_dir), "--tokenizer", tokenizer, *tiny, *steps]) == 0
    assert RangeHandler.sent == [len(RangeHandler.payload)]  # downloaded once, into the cache
    assert (tmp_path / "cache" / SAMPLE).read_bytes() == cut
    manifest = json.loads((out_dir / "data" / "manifest.json").read_text())
    assert [Path(f).name for f, *_ in manifest["recipe"]["files"]] == [SAMPLE]
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
