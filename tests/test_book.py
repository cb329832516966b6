"""The book: `jupyter-book build . -W` succeeds and every page reads well at 1280 px and at 390 px.

Headless Chromium (selenium through Debian's chromedriver) opens each page: at 1280 px no code or
output block scrolls sideways; at 390 px (a phone) the page itself never does. The build runs once
per session (skipped when `_build/html` is newer than every source of the book); screenshots land in
`_build/screenshots/1280/` and `/390/`. Run time: ~40 s with a build, ~20 s without (2 busy cores).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.wait import WebDriverWait

from llama2_et.config import preset

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
)


def book_sources() -> list[Path]:
    """Every file the build reads: the config, the toc, the prose pages, the CSS and the notebooks."""
    return [
        ROOT / "_config.yml",
        ROOT / "_toc.yml",
        *ROOT.glob("book/*.md"),
        *ROOT.glob("book/_static/*"),
        *ROOT.glob("notebooks/*.ipynb"),
    ]


def toc_files() -> list[str]:
    """The `file:` entries of _toc.yml that are not commented out, in reading order."""
    text = (ROOT / "_toc.yml").read_text()
    root = re.search(r"^root:\s*(\S+)", text, re.M).group(1)
    return [root, *re.findall(r"^\s*-\s*file:\s*(\S+)", text, re.M)]


@pytest.fixture(scope="session")
def built_html() -> Path:
    """_build/html, rebuilt whole (`--all`: Sphinx misses changed CSS) when older than a source."""
    index = HTML / "index.html"
    newest_source = max(p.stat().st_mtime for p in book_sources())
    if not index.exists() or index.stat().st_mtime < newest_source:
        jupyter_book = shutil.which("jupyter-book") or pytest.fail(
            "jupyter-book is not installed (pip install -r requirements.txt)"
        )
        result = subprocess.run(
            [jupyter_book, "build", ".", "-W", "--keep-going", "--all"],
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


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven by selenium through Debian's chromedriver, in a throw-away profile."""
    binary = shutil.which("chromium") or pytest.fail(
        "the book is checked in Chromium: apt-get install chromium"
    )
    driver_path = shutil.which("chromedriver") or pytest.fail(
        "selenium drives Chromium through chromedriver: apt-get install chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    yield driver
    driver.quit()


def open_page(driver, page: Path, width: int, height: int = 900) -> None:
    """Load a built page in a viewport of width x height CSS pixels (a phone below 600 px)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.get(page.as_uri())
    driver.execute_script("return document.fonts.ready")


def screenshot(driver, name: str, width: int) -> np.ndarray:
    """Save the viewport as _build/screenshots/<width>/<name>.png; return its pixels (H, W, C)."""
    out = SCREENSHOTS / str(width) / f"{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    png = driver.get_screenshot_as_png()
    assert png[:8] == PNG_SIGNATURE, f"{out}: not a PNG"
    out.write_bytes(png)
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.float32)


# Code and output blocks, tables and display math of the article whose content is wider than their box.
OVERFLOWING_BLOCKS = """
const blocks = document.querySelectorAll(
  '.bd-article pre, .bd-article table, .bd-article div.math, .bd-article div.cell_output .output');
return [...blocks].filter(b => b.scrollWidth > b.clientWidth + 1).map(b => [
  b.tagName + '.' + b.className, b.scrollWidth, b.clientWidth, b.textContent.trim().slice(0, 80)]);
"""

# Every image of the article: its alt text, decoded width, laid-out width and the column's width.
IMAGES = """
const column = document.querySelector('.bd-article').getBoundingClientRect().width;
return [...document.querySelectorAll('.bd-article img')].map(img => ({
  src: img.getAttribute('src'), alt: img.getAttribute('alt') || '', natural: img.naturalWidth,
  width: img.getBoundingClientRect().width, column: column}));
"""


# The diagrams the package draws (llama2_et.figures), each in its chapter, found by its caption, which
# names the function that drew it.
DIAGRAMS = {
    "notebooks/01_architecture": "decoder_diagram",
    "notebooks/02_kv_cache": "cache_steps",
    "notebooks/05_preproc": "design_flows",
}

CAPTIONED_IMAGES = """
return [...document.querySelectorAll('.bd-article figure')].map(f => {
  const img = f.querySelector('img'), caption = f.querySelector('figcaption');
  return {caption: caption ? caption.textContent : '', complete: img ? img.complete : false,
          natural: img ? img.naturalWidth : 0, width: img ? img.getBoundingClientRect().width : 0};
});
"""


@pytest.mark.slow  # the book build (jupyter-book)
def test_every_toc_entry_is_built(built_html: Path):
    for entry in toc_files():
        page = built_html / f"{entry}.html"
        assert page.exists(), f"{entry} is in _toc.yml but {page} was not built"


@pytest.mark.slow  # the book build, opened in headless Chromium
def test_introduction_page_renders(built_html: Path, browser):
    open_page(browser, built_html / f"{toc_files()[0]}.html", 1280)
    text = browser.find_element(By.TAG_NAME, "body").get_attribute("innerHTML")
    assert "How to run it" in text and "Where the real files come from" in text
    for entry in toc_files()[1:]:  # the navigation links every chapter
        assert f"{Path(entry).name}.html" in text, f"the introduction does not link {entry}"
    pixels = screenshot(browser, "intro", 1280)
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 10, "the introduction screenshot is blank"


@pytest.mark.slow  # the book build, opened in headless Chromium
def test_code_fits_its_block_at_1280px(built_html: Path, browser):
    """At 1280 px no code, output, table or math block of any page needs a sideways scroll."""
    overflowing, blocks = {}, 0
    for entry in toc_files():
        open_page(browser, built_html / f"{entry}.html", 1280)
        screenshot(browser, Path(entry).name, 1280)
        blocks += browser.execute_script("return document.querySelectorAll('.bd-article pre').length")
        if found := browser.execute_script(OVERFLOWING_BLOCKS):
            overflowing[entry] = found
    assert blocks > 100, f"only {blocks} code blocks in the whole book: the selector misses them"
    assert not overflowing, "blocks wider than their box at 1280 px:\n" + "\n".join(
        f"{entry}: {block}" for entry, found in overflowing.items() for block in found
    )


@pytest.mark.slow  # the book build, opened in headless Chromium
def test_page_contents_open_from_the_header_at_1280px(built_html: Path, browser):
    """The page's contents, moved off the side to widen the code, open from the header's button."""
    open_page(browser, built_html / "notebooks" / "06_export.html", 1280)
    assert not browser.find_element(By.ID, "pst-secondary-sidebar").is_displayed()
    buttons = [b for b in browser.find_elements(By.CSS_SELECTOR, ".secondary-toggle") if b.is_displayed()]
    assert len(buttons) == 1, f"{len(buttons)} 'On this page' buttons are shown at 1280 px"
    buttons[0].click()
    drawer = browser.find_element(By.ID, "pst-secondary-sidebar-modal")
    WebDriverWait(browser, 5).until(lambda _: drawer.is_displayed())
    assert drawer.rect["width"] > 200 and "Memory planning" in drawer.text
    screenshot(browser, "06_export_contents", 1280)


@pytest.mark.slow  # the book build, opened in headless Chromium
def test_phone_width_has_no_page_overflow(built_html: Path, browser):
    """At 390 px the navigation is collapsed, and only blocks (never the page itself) scroll sideways."""
    for entry in toc_files():
        open_page(browser, built_html / f"{entry}.html", 390, 844)
        pixels = screenshot(browser, Path(entry).name, 390)
        assert pixels.shape[:2] == (844, 390) and pixels.std() > 10, f"{entry}: blank at 390 px"
        page_width, viewport = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
        )
        assert page_width <= viewport, f"{entry}: the page is {page_width} px wide in a {viewport} px phone"
        sidebar = browser.find_element(By.CSS_SELECTOR, ".bd-sidebar-primary")
        assert not sidebar.is_displayed() or sidebar.rect["x"] + sidebar.rect["width"] <= 0, (
            f"{entry}: the chapter navigation is open at 390 px"
        )


@pytest.mark.slow  # the book build, opened in headless Chromium
@pytest.mark.parametrize("width", [1280, 390])
def test_figures_fit_the_column_and_have_alt_text(built_html: Path, browser, width: int):
    figures = 0
    for entry in toc_files():
        open_page(browser, built_html / f"{entry}.html", width)
        for img in browser.execute_script(IMAGES):
            figures += 1
            path = (built_html / entry).parent / img["src"]
            assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{entry}: {img['src']} is not a PNG"
            assert np.asarray(Image.open(path).convert("L"), dtype=np.float32).std() > 5, f"{path} is blank"
            assert img["natural"] > 0, f"{entry}: Chromium did not decode {img['src']}"
            assert img["width"] <= img["column"], f"{entry}: {img['src']} is wider than the column: {img}"
            alt = img["alt"]
            assert len(alt) > 10 and not alt.endswith(".png"), f"{entry}: {img['src']} has no alt text"
    assert figures >= 5, f"only {figures} figures in the book"


@pytest.mark.slow  # the book build, opened in headless Chromium
@pytest.mark.parametrize("entry, drawn_by", DIAGRAMS.items())
def test_package_diagram_renders_in_its_chapter(built_html: Path, browser, entry: str, drawn_by: str):
    """The chapter shows the diagram as a captioned figure whose image Chromium decoded."""
    open_page(browser, built_html / f"{entry}.html", 1280)
    WebDriverWait(browser, 10).until(
        lambda driver: driver.execute_script("return [...document.images].every(img => img.complete)")
    )
    figures = [f for f in browser.execute_script(CAPTIONED_IMAGES) if drawn_by in f["caption"]]
    assert len(figures) == 1, f"{entry}: {len(figures)} figures captioned with {drawn_by}"
    assert figures[0]["complete"] and figures[0]["natural"] > 0, f"{entry}: {drawn_by}'s image did not decode"
    assert figures[0]["width"] > 300, (
        f"{entry}: {drawn_by}'s figure is laid out {figures[0]['width']} px wide"
    )


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
