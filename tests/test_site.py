"""The course website (`make site`, docs/build.py) in a real browser: headless Chromium driven by selenium.

The site is built if build/site/index.html is missing (or always with COMPANION_SITE_REBUILD=1), served over http
from a local thread server, and every page is opened: no console errors (SEVERE entries), every image present and
decoded, every internal link pointing at an existing file (and anchor). Screenshots of the front page and of one
notebook page go to build/screenshots/. Without Chromium and chromedriver the test skips, unless CI is set.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SITE = REPO / "build" / "site"
SHOTS = REPO / "build" / "screenshots"
CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
CHROMEDRIVER = ("/usr/bin/chromedriver", "chromedriver")
NOTEBOOK_SHOT = "notebooks/01_definitions.html"
ALL_DECODED = (
    "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0))"
    ".map(i => i.getAttribute('src'));"
)


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = name if os.path.isabs(name) else shutil.which(name)
        if path and os.access(path, os.X_OK):
            return path
    return None


def _unavailable(reason: str) -> None:
    """Skip with one line locally; in CI (CI set) the missing browser is a failure, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and {reason}: install chromium and chromium-driver (apt-get install -y ...)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def site() -> Path:
    """build/site/, built with docs/build.py when missing or when COMPANION_SITE_REBUILD=1 asks."""
    if not (SITE / "index.html").exists() or os.environ.get("COMPANION_SITE_REBUILD") == "1":
        done = subprocess.run(
            [sys.executable, str(REPO / "docs" / "build.py")], cwd=REPO, capture_output=True, text=True
        )
        assert done.returncode == 0, f"docs/build.py failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (SITE / "index.html").exists()
    return SITE


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest's output to the failures
        pass


@pytest.fixture(scope="module")
def server(site: Path):
    """The site over http on 127.0.0.1 at a free port, so links resolve the way a real host resolves them."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _find(CHROMIUM), _find(CHROMEDRIVER)
    if chromium is None or driver_path is None:
        _unavailable("no Chromium/chromedriver found (Debian: apt-get install chromium chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install selenium)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
        "--hide-scrollbars",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def _pages(site: Path) -> list[str]:
    """Every page of the site: the theme's template fragments under _static/ are not pages."""
    return sorted(
        p.relative_to(site).as_posix()
        for p in site.rglob("*.html")
        if not p.relative_to(site).parts[0].startswith("_")
    )


def _target(site: Path, base: str, href: str) -> tuple[Path, str] | None:
    """The local file (and fragment) an absolute link points to, or None for a link off this site."""
    parts = urlsplit(href)
    if f"{parts.scheme}://{parts.netloc}" != base:
        return None
    path = unquote(parts.path).lstrip("/")
    if path == "" or path.endswith("/"):
        path += "index.html"
    return site / path, unquote(parts.fragment)


def _has_anchor(file: Path, fragment: str, cache: dict[Path, str]) -> bool:
    if file not in cache:
        cache[file] = file.read_text(errors="replace")
    return re.search(rf'\b(id|name)="{re.escape(fragment)}"', cache[file]) is not None


def _visit(driver, url: str) -> list[str]:
    """Open a page, wait until it is loaded and its images are settled; returns the images not decoded."""
    driver.get(url)
    deadline = time.monotonic() + 20
    while driver.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.1)
    driver.execute_script("document.querySelectorAll('img[loading=lazy]').forEach(i => i.loading = 'eager');")
    bad = driver.execute_script(ALL_DECODED)
    while bad and time.monotonic() < deadline:
        time.sleep(0.2)
        bad = driver.execute_script(ALL_DECODED)
    return bad


def test_site_in_browser(site: Path, server: str, browser) -> None:
    pages = _pages(site)
    assert "index.html" in pages and len(pages) >= 14, f"too few pages built: {pages}"
    errors: list[str] = []
    links_checked = images_checked = 0
    cache: dict[Path, str] = {}
    for page in pages:
        undecoded = _visit(browser, f"{server}/{page}")
        errors += [f"{page}: image not decoded: {src}" for src in undecoded]
        images_checked += browser.execute_script("return document.images.length")
        errors += [
            f"{page}: console {e['level']}: {e['message']}"
            for e in browser.get_log("browser")
            if e["level"] == "SEVERE"
        ]
        hrefs = browser.execute_script(
            "return Array.from(document.querySelectorAll('a[href]')).map(a => a.href);"
        )
        for href in set(hrefs):
            target = _target(site, server, href)
            if target is None:
                continue
            file, fragment = target
            links_checked += 1
            if not file.is_file():
                errors.append(f"{page}: link to a missing file: {href}")
            elif fragment and file.suffix == ".html" and not _has_anchor(file, fragment, cache):
                errors.append(f"{page}: link to a missing anchor: {href}")
        if page == "index.html":
            srcs = browser.execute_script(
                "return Array.from(document.images).map(i => i.getAttribute('src'));"
            )
            assert any("course_infographic" in s for s in srcs), (
                "the front page does not show the infographic"
            )
    print(f"site: {len(pages)} pages, {images_checked} images, {links_checked} internal links checked")
    assert not errors, f"{len(errors)} problem(s):\n" + "\n".join(errors[:40])

    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.set_window_size(1400, 1600)
    for page, name, scroll_to in (
        ("index.html", "front.png", None),
        (NOTEBOOK_SHOT, "notebook.png", ".cell_output img"),
    ):
        _visit(browser, f"{server}/{page}")
        if (
            scroll_to
        ):  # the notebook page from its first figure on: a figure, then the text and outputs after it
            browser.execute_script(f"document.querySelector('{scroll_to}').scrollIntoView();")
        assert browser.save_screenshot(str(SHOTS / name)), f"could not save {SHOTS / name}"
        assert (SHOTS / name).stat().st_size > 10_000, f"{SHOTS / name} looks empty"
