"""Every page of the built book, opened in headless Chromium the way a reader opens it."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
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
