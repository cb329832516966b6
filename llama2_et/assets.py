"""Where real checkpoints, tokenizers and data come from: a local folder, a cache, or a download.

Order of resolution for a named asset:
1. `LLAMA2_ET_DATA=<folder>`: the file must be in that folder (offline use, tests and CI);
2. otherwise the cache folder (`LLAMA2_ET_CACHE`, default ~/.cache/llama2_et), downloading into
   it on first use, checking the size against the server's Content-Length and the sha256 where
   one is published. An asset with a `derive` step is made from the file at its URL (the book's
   TinyStories sample is a published file cut after its last complete story), and its sha256 is
   that of the result.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .files import atomic_write_bytes

HF_TINYLLAMAS = "https://huggingface.co/karpathy/tinyllamas/resolve/main"
LLAMA2C_RAW = "https://raw.githubusercontent.com/karpathy/llama2.c/master"
HF_TINYSTORIES = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
# A 2 MiB byte range of the TinyStories training split, published in gusjengis/toy-RNN at this commit
TOY_RNN_SAMPLE = (
    "https://raw.githubusercontent.com/gusjengis/toy-RNN/"
    "e4c7ff8bba4ff7989e69a3a816ebe4b14813b41e/data/tinystories_sample.txt"
)
STORY_END = b"<|endoftext|>\n"  # the line after each story in TinyStories' .txt files


def cut_after_last_story(text: bytes) -> bytes:
    """text up to and including its last complete `<|endoftext|>` line: drops a story cut off at the end."""
    end = text.rfind(STORY_END)
    if end < 0:
        raise ValueError("no complete story: the text has no '<|endoftext|>' line")
    return text[: end + len(STORY_END)]


@dataclass(frozen=True)
class Asset:
    """A file the package knows by name: where it is published and its checksum."""

    filename: str
    url: str | None  # None: not published; it is only ever read from LLAMA2_ET_DATA
    sha256: str | None  # None where no checksum is published; the download is then only size-checked
    derive: Callable[[bytes], bytes] | None = None  # makes it from the file at url; sha256 is the result's


ASSETS = {
    a.filename: a
    for a in (
        Asset(
            "stories260K.bin",
            f"{HF_TINYLLAMAS}/stories260K/stories260K.bin",
            "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696",
        ),
        Asset(
            "tok512.bin",
            f"{HF_TINYLLAMAS}/stories260K/tok512.bin",
            "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312",
        ),
        Asset("tok512.model", f"{HF_TINYLLAMAS}/stories260K/tok512.model", None),
        Asset("stories15M.bin", f"{HF_TINYLLAMAS}/stories15M.bin", None),
        Asset("stories42M.bin", f"{HF_TINYLLAMAS}/stories42M.bin", None),
        Asset("stories110M.bin", f"{HF_TINYLLAMAS}/stories110M.bin", None),
        Asset(
            "tokenizer.model",
            f"{LLAMA2C_RAW}/tokenizer.model",
            "9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347",
        ),
        Asset(
            "tokenizer.bin",
            f"{LLAMA2C_RAW}/tokenizer.bin",
            "50a52ef822ee9e83de5ce9d0be0a025a773d019437f58b5ff9dcafb063ece361",
        ),
        # The published files of roneneldan/TinyStories. The dataset publishes no checksums that we
        # know of, so these are size-checked only.
        Asset("TinyStories_all_data.tar.gz", f"{HF_TINYSTORIES}/TinyStories_all_data.tar.gz", None),
        Asset("TinyStories-train.txt", f"{HF_TINYSTORIES}/TinyStories-train.txt", None),
        Asset("TinyStories-valid.txt", f"{HF_TINYSTORIES}/TinyStories-valid.txt", None),
        Asset("TinyStoriesV2-GPT4-train.txt", f"{HF_TINYSTORIES}/TinyStoriesV2-GPT4-train.txt", None),
        Asset("TinyStoriesV2-GPT4-valid.txt", f"{HF_TINYSTORIES}/TinyStoriesV2-GPT4-valid.txt", None),
        # 2,316 real TinyStories stories (2,096,346 bytes), the book's training data: the published
        # 2,097,152-byte range cut after its last complete story, which drops one truncated story.
        Asset(
            "tinystories_train_sample.txt",
            TOY_RNN_SAMPLE,
            "ba02237f5747a07d420cb7329f721fdc51b6f5c35a81788b9c4bb871e15ff30a",
            cut_after_last_story,
        ),
    )
}

# preset name -> (checkpoint file, tokenizer stem)
CHECKPOINTS = {
    "stories260K": ("stories260K.bin", "tok512"),
    "stories15M": ("stories15M.bin", "tokenizer"),
    "stories42M": ("stories42M.bin", "tokenizer"),
    "stories110M": ("stories110M.bin", "tokenizer"),
}
TOKENIZERS = {"tok512": "tok512", "llama2": "tokenizer", **{k: v[1] for k, v in CHECKPOINTS.items()}}


def cache_dir() -> Path:
    """The download cache: LLAMA2_ET_CACHE, default ~/.cache/llama2_et."""
    return Path(os.environ.get("LLAMA2_ET_CACHE", Path.home() / ".cache" / "llama2_et"))


def chapter_dir() -> Path:
    """Where the chapters keep what they build (.pte files, the C++ runner, trained checkpoints).

    One folder under the cache per version of the package's source, so a chapter reuses what an
    earlier chapter built with the same code, and never a file an older package built.
    """
    package = Path(__file__).parent
    digest = hashlib.sha256()
    for source in sorted(p for p in package.rglob("*") if p.suffix in {".py", ".cpp", ".h", ".txt"}):
        digest.update(source.relative_to(package).as_posix().encode() + b"\0" + source.read_bytes())
    folder = cache_dir() / "chapters" / digest.hexdigest()[:12]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sha256_of(path: Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download url to dest (resuming a partial .part file), then check its size and sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            if done and response.status != 206:  # the server ignored the range: start over
                done = 0
            total = int(response.headers.get("Content-Length", 0)) + done
            with (
                open(part, "ab" if done else "wb") as f,
                tqdm(total=total or None, initial=done, unit="B", unit_scale=True, desc=dest.name) as bar,
            ):
                for block in iter(lambda: response.read(1 << 20), b""):
                    f.write(block)
                    bar.update(len(block))
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename below makes it the asset
    except (urllib.error.URLError, http.client.HTTPException, TimeoutError, OSError) as exc:
        raise FileNotFoundError(
            f"could not download {url} ({exc}). Offline? Fetch it by hand into {dest.parent}, "
            f"or set LLAMA2_ET_DATA to a folder that holds {dest.name}"
        ) from None
    if total and (got := part.stat().st_size) != total:
        raise FileNotFoundError(
            f"the download of {url} stopped at {got:,} of {total:,} bytes; run again to resume it"
        )
    if sha256 is not None and (actual := sha256_of(part)) != sha256:
        part.unlink()
        raise ValueError(f"{url}: sha256 {actual} does not match the published {sha256}; download again")
    part.rename(dest)
    return dest


def derive_file(source: Path, dest: Path, derive: Callable[[bytes], bytes], sha256: str | None) -> Path:
    """Write derive(source's bytes) to dest through a temporary file, once its sha256 is checked.

    On a mismatch the source is deleted (so the next fetch downloads it again) and dest is not written.
    """
    data = derive(source.read_bytes())
    if sha256 is not None and (actual := hashlib.sha256(data).hexdigest()) != sha256:
        source.unlink()
        raise ValueError(
            f"{dest.name} derived from {source.name} has sha256 {actual}, not the expected {sha256}; "
            "run again to download its source again"
        )
    return atomic_write_bytes(dest, data)


def local_path(filename: str) -> Path:
    """Where a named asset is looked up: in LLAMA2_ET_DATA if set, else in the cache."""
    folder = os.environ.get("LLAMA2_ET_DATA")
    return (Path(folder) if folder else cache_dir()) / filename


def fetch(filename: str) -> Path:
    """Path of a known asset file: from LLAMA2_ET_DATA, else the cache (downloading it once)."""
    asset = ASSETS.get(filename)
    if asset is None:
        raise ValueError(f"unknown asset {filename!r}; known: {', '.join(ASSETS)}")
    path = local_path(filename)
    if path.is_file():
        return path
    if folder := os.environ.get("LLAMA2_ET_DATA"):
        where = f"get it from {asset.url}" if asset.url else "it is not published: copy it there"
        where += " and derive it as llama2_et.assets.ASSETS says" if asset.derive else ""
        raise FileNotFoundError(
            f"{path} not found: LLAMA2_ET_DATA={folder} must hold {filename} ({where})"
            + (f", or unset LLAMA2_ET_DATA to download it into {cache_dir()}" if asset.url else "")
        )
    if asset.url is None:
        raise FileNotFoundError(
            f"{filename} is not published, so it is only read from LLAMA2_ET_DATA, which is not set: "
            "set LLAMA2_ET_DATA to the folder holding it"
        )
    if asset.derive is None:
        return download(asset.url, path, asset.sha256)
    source = path.with_name(path.name + ".source")
    try:
        download(asset.url, source)
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"{exc} ({filename} is made from {source.name}: see llama2_et.assets)"
        ) from None
    derive_file(source, path, asset.derive, asset.sha256)
    source.unlink()
    return path


def resolve_checkpoint(name_or_path: str | Path) -> Path:
    """An existing checkpoint path as given, or a preset name such as 'stories260K'."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if str(name_or_path) in CHECKPOINTS:
        return fetch(CHECKPOINTS[str(name_or_path)][0])
    raise FileNotFoundError(
        f"checkpoint {name_or_path!r} is neither an existing path nor a preset ({', '.join(CHECKPOINTS)})"
    )


def resolve_tokenizer(name_or_path: str | Path, kind: str = "model") -> Path:
    """An existing tokenizer path, or a name ('stories260K', 'tok512', 'llama2'): kind 'model' or 'bin'."""
    path = Path(name_or_path)
    if path.exists():
        return path
    if kind not in ("model", "bin"):
        raise ValueError(f"kind must be 'model' (sentencepiece) or 'bin' (llama2.c), got {kind!r}")
    if str(name_or_path) in TOKENIZERS:
        return fetch(f"{TOKENIZERS[str(name_or_path)]}.{kind}")
    raise FileNotFoundError(
        f"tokenizer {name_or_path!r} is neither an existing path nor a name ({', '.join(TOKENIZERS)})"
    )
