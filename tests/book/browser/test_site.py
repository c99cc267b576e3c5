"""Every page of the built book, opened in headless Chromium the way a reader opens it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[3]
HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"

PAGES = sorted(str(p.relative_to(HTML)) for p in HTML.rglob("*.html") if not p.name.startswith("_"))
CONTENT_PAGES = [p for p in PAGES if p.startswith(("book/", "notebooks/"))]


def open_page(browser, url: str) -> tuple[object, list[str], list[str]]:
    """Open ``url``; return the page, console errors, and requests that tried to leave localhost (blocked)."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    outside: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    def route(request_route, request) -> None:
        host = urlparse(request.url).hostname
        if request.url.startswith(("data:", "blob:")) or host in {"127.0.0.1", "localhost"}:
            request_route.continue_()
        else:
            outside.append(request.url)
            request_route.abort()

    page.route("**/*", route)
    page.goto(url, wait_until="networkidle")
    return page, errors, outside


@pytest.mark.parametrize("path", CONTENT_PAGES)
def test_page_loads_cleanly_offline(browser, site_url: str, path: str) -> None:
    page, errors, outside = open_page(browser, f"{site_url}/{path}")
    try:
        if page.locator(".math").count():
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
            page.evaluate("() => MathJax.startup.promise")
            assert page.locator("mjx-container").count() >= page.locator(".math").count(), "MathJax left formulas"
            assert "$$" not in page.locator("article").inner_text(), "raw $$ left in the text"
        broken = page.evaluate(
            "() => [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"
        )
        assert not broken, f"images that did not load: {broken}"
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(SCREENSHOTS / f"{Path(path).with_suffix('').as_posix().replace('/', '__')}.png"), full_page=True
        )
    finally:
        page.close()
    assert not outside, f"requests that tried to leave the site: {outside}"
    assert not errors, f"console errors: {errors}"


def test_search_finds_attention(browser, site_url: str) -> None:
    page, errors, outside = open_page(browser, f"{site_url}/search.html?q=attention")
    try:
        page.wait_for_selector("#search-results li", timeout=20000)
        titles = page.locator("#search-results li").all_inner_texts()
    finally:
        page.close()
    assert any("Attention" in title for title in titles), titles
    assert not outside and not errors


CHAPTER_PAGES = [p for p in PAGES if p.startswith("notebooks/")]
# Open every dropdown first (the exercises' solutions sit in one, a little narrower than the page), then list the
# longest line of each code cell that does not fit its box.
WIDE_LINES = """() => {
    document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
    document.querySelectorAll('details').forEach(d => { d.open = true; });
    return [...document.querySelectorAll('div.cell_input pre')]
        .filter(pre => pre.scrollWidth > pre.clientWidth + 1)
        .map(pre => pre.textContent.split('\\n').reduce((a, b) => (b.length > a.length ? b : a), ''));
}"""


@pytest.mark.parametrize("path", CHAPTER_PAGES)
def test_every_code_line_fits_its_cell_at_1280_px(browser, site_url: str, path: str) -> None:
    """A reader sees whole lines of code, without scrolling sideways (notebooks keep to 88 columns)."""
    page, _, _ = open_page(browser, f"{site_url}/{path}")
    try:
        assert page.locator("div.cell_input pre").count() > 0, "a chapter page shows its code"
        too_wide = page.evaluate(WIDE_LINES)
    finally:
        page.close()
    assert not too_wide, f"{len(too_wide)} code cell(s) wider than the column; longest lines: {too_wide[:3]}"


def test_results_page_has_one_section_per_chapter_and_each_chapter_links_to_it(browser, site_url: str) -> None:
    chapters = [Path(p).stem for p in CHAPTER_PAGES]
    page, errors, _ = open_page(browser, f"{site_url}/book/results.html")
    try:
        sections = page.evaluate(
            "() => [...document.querySelectorAll('article section section')]"
            ".map(s => (s.querySelector('span[id^=\"results-\"]') || s).id)"
        )
        tables = page.locator("article table.results-by-profile").count()
    finally:
        page.close()
    assert sections == [f"results-{chapter.lower().replace('_', '-')}" for chapter in chapters]
    assert tables == len(chapters), "each chapter's section shows its table (make test builds the book executed)"
    for chapter in chapters:
        html = (HTML / "notebooks" / f"{chapter}.html").read_text(encoding="utf-8")
        assert f"results.html#results-{chapter.lower().replace('_', '-')}" in html, f"{chapter} links its results"
    assert not errors
