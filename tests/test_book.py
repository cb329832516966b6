"""The book: `jupyter-book build . -W` succeeds and the built pages render in headless Chromium.

The build runs once per session (skipped when `_build/html` is newer than every source of the book);
screenshots land in `_build/screenshots/`. Run time: ~25 s with a build, ~10 s without (2 busy cores).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llama2_et.config import preset

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def book_sources() -> list[Path]:
    """Every file the build reads: the config, the toc, the prose pages and the notebooks."""
    return [ROOT / "_config.yml", ROOT / "_toc.yml", *ROOT.glob("book/*.md"), *ROOT.glob("notebooks/*.ipynb")]


def toc_files() -> list[str]:
    """The `file:` entries of _toc.yml that are not commented out, in reading order."""
    text = (ROOT / "_toc.yml").read_text()
    root = re.search(r"^root:\s*(\S+)", text, re.M).group(1)
    return [root, *re.findall(r"^\s*-\s*file:\s*(\S+)", text, re.M)]


@pytest.fixture(scope="session")
def built_html() -> Path:
    """_build/html, rebuilt with `jupyter-book build . -W` when missing or older than a source."""
    index = HTML / "index.html"
    newest_source = max(p.stat().st_mtime for p in book_sources())
    if not index.exists() or index.stat().st_mtime < newest_source:
        jupyter_book = shutil.which("jupyter-book") or pytest.fail(
            "jupyter-book is not installed (requirements.txt)"
        )
        result = subprocess.run(
            [jupyter_book, "build", ".", "-W", "--keep-going"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert result.returncode == 0, (
            f"jupyter-book build . -W failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
        index.touch()  # the build leaves an unchanged index.html's mtime alone
    return HTML


def chromium() -> str:
    """Path of Debian's chromium; a failure naming the package when it is missing."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail("headless Chromium is needed to check the book: apt-get install chromium")


def run_chromium(tmp_path: Path, url: str, *mode: str, window: str = "1280,900") -> str:
    """Run headless Chromium on a file URL in a throw-away profile; return its stdout."""
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--window-size={window}",
        "--virtual-time-budget=5000",
        *mode,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"chromium failed on {url}:\n{result.stderr[-2000:]}"
    return result.stdout


def screenshot(tmp_path: Path, page: Path, name: str, window: str = "1280,900") -> np.ndarray:
    """Screenshot a page into _build/screenshots/<name>.png; return its pixels (H, W, C)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = SCREENSHOTS / f"{name}.png"
    out.unlink(missing_ok=True)
    run_chromium(tmp_path, page.as_uri(), f"--screenshot={out}", window=window)
    assert out.read_bytes()[:8] == PNG_SIGNATURE, f"{out} is not a PNG"
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)


class ImageSources(HTMLParser):
    """Collects the src and naturalWidth probe attributes of <img> elements."""

    def __init__(self):
        super().__init__()
        self.images: list[dict[str, str]] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append({k: v or "" for k, v in attrs})


def figure_chapter(html: Path) -> Path:
    """The first chapter in the toc whose built page holds a PNG figure of a notebook output."""
    for entry in toc_files():
        page = html / f"{entry}.html"
        if (
            entry.startswith("notebooks/")
            and page.exists()
            and re.search(r'<img[^>]+src="[^"]+\.png"', page.read_text())
        ):
            return page
    pytest.fail("no chapter of the built book shows a PNG figure")


def test_every_toc_entry_is_built(built_html: Path):
    for entry in toc_files():
        page = built_html / f"{entry}.html"
        assert page.exists(), f"{entry} is in _toc.yml but {page} was not built"


def test_introduction_page_renders(built_html: Path, tmp_path: Path):
    page = built_html / f"{toc_files()[0]}.html"
    dom = run_chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert "How to run it" in dom and "Where the real files come from" in dom
    for entry in toc_files()[1:]:  # the navigation links every chapter
        assert f"{Path(entry).name}.html" in dom, f"the introduction does not link {entry}"
    pixels = screenshot(tmp_path, page, "intro")
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 10, "the introduction screenshot is blank"


def test_chapter_figure_renders(built_html: Path, tmp_path: Path):
    page = figure_chapter(built_html)
    # A copy of the page, beside it so relative URLs resolve, that records each image's decoded
    # width and its box on the page once everything has loaded.
    probe = page.with_name(f"_probe_{page.name}")
    script = (
        "<script>window.addEventListener('load', () => { for (const img of document.images) { "
        "const box = img.getBoundingClientRect(); "
        "img.setAttribute('data-natural-width', img.naturalWidth); "
        "img.setAttribute('data-box', [box.left, box.top + window.scrollY, box.width, box.height].join(',')); "
        "} });</script>"
    )
    probe.write_text(page.read_text().replace("</body>", script + "</body>"))
    try:
        parser = ImageSources()
        parser.feed(run_chromium(tmp_path, probe.as_uri(), "--dump-dom"))
        figures = [img for img in parser.images if img.get("src", "").endswith(".png")]
        assert figures, f"{page.name}: no PNG <img> in the rendered page"
        for img in figures:
            path = (page.parent / img["src"]).resolve()
            assert path.is_file() and path.stat().st_size > 0, f"{img['src']} missing or empty"
            assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
            assert int(img.get("data-natural-width", "0")) > 0, f"Chromium did not decode {img['src']}"
            assert np.asarray(Image.open(path).convert("L"), dtype=np.float32).std() > 5, f"{path} is blank"
        # Screenshot a window tall enough to hold the first figure, then look at the figure's box.
        left, top, width, height = (round(float(v)) for v in figures[0]["data-box"].split(","))
        assert width > 100 and height > 100, f"the first figure of {page.name} is laid out {width}x{height}"
        pixels = screenshot(tmp_path, page, Path(page.name).stem, window=f"1280,{top + height + 40}")
        assert pixels.std() > 10, f"the screenshot of {page.name} is blank"
        figure_pixels = pixels[top : top + height, left : left + width]
        assert figure_pixels.std() > 10, f"the first figure of {page.name} did not render in the screenshot"
    finally:
        probe.unlink(missing_ok=True)


def test_symbols_page_matches_the_preset():
    """The stories260K column of book/symbols.md is the package's preset."""
    args = preset("stories260K")
    expected = {
        "args.dim": args.dim,
        "args.n_layers": args.n_layers,
        "args.n_heads": args.n_heads,
        "args.kv_heads": args.kv_heads,
        "args.n_rep": args.n_rep,
        "args.head_dim": args.head_dim,
        "args.ffn_hidden_dim": args.ffn_hidden_dim,
        "args.vocab_size": args.vocab_size,
        "args.max_seq_len": args.max_seq_len,
        "args.rope_theta": args.rope_theta,
        "args.norm_eps": args.norm_eps,
    }
    rows = re.findall(
        r"^\|[^|]+\|[^|]+\| `(args\.\w+)`[^|]*\| ([^|]+) \|$", (ROOT / "book/symbols.md").read_text(), re.M
    )
    found = {name: value.strip() for name, value in rows}
    assert set(found) == set(expected)
    for name, value in expected.items():
        assert float(found[name]) == float(value), (
            f"book/symbols.md: {name} = {found[name]}, preset has {value}"
        )
