"""The built site (``_build/html``): nothing loaded from outside it, vendored scripts present, Colab buttons right.

``make test`` builds the book (executing every notebook in the fast profile) before it runs these tests. Run alone
without a build, they skip, unless MMCOURSE_REQUIRE_BOOK=1 (as in CI), when a missing build fails.
"""

from __future__ import annotations

import os
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.book  # make test runs these after building the book

ROOT = Path(__file__).resolve().parents[2]
HTML = ROOT / "_build" / "html"
EXTERNAL = re.compile(r"^(https?:)?//", re.IGNORECASE)
CSS_EXTERNAL = re.compile(r"(url\(\s*['\"]?|@import\s+['\"])(https?:)?//", re.IGNORECASE)


def html_pages() -> list[Path]:
    if not (HTML / "index.html").is_file():
        if os.environ.get("MMCOURSE_REQUIRE_BOOK") == "1":
            pytest.fail(f"{HTML} is not built: `make test` builds it before running the tests")
        pytest.skip("the book is not built (make test builds it)")
    return sorted(HTML.rglob("*.html"))


class ResourceCollector(HTMLParser):
    """Collects the URLs a page loads by itself: scripts, stylesheets, fonts, images, frames, inline CSS."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.inline_css: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag in {"script", "img", "iframe", "source", "audio", "video", "embed"} and values.get("src"):
            self.loaded.append(values["src"] or "")
        if tag == "link" and values.get("href"):
            relations = (values.get("rel") or "").lower().split()
            if {"stylesheet", "preload", "prefetch", "modulepreload", "icon", "manifest"} & set(relations):
                self.loaded.append(values["href"] or "")
        if values.get("style"):
            self.inline_css.append(values["style"] or "")
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style:
            self.inline_css.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "style":
            self._in_style = False


def test_no_page_loads_anything_from_outside_the_site() -> None:
    offenders = []
    for page in html_pages():
        collector = ResourceCollector()
        collector.feed(page.read_text(encoding="utf-8"))
        offenders += [f"{page.relative_to(HTML)}: {url}" for url in collector.loaded if EXTERNAL.match(url)]
        if any(CSS_EXTERNAL.search(css) for css in collector.inline_css):
            offenders.append(f"{page.relative_to(HTML)}: inline CSS with an external url()")
    assert not offenders, "external resources:\n" + "\n".join(offenders)


def test_no_stylesheet_loads_fonts_or_css_from_outside() -> None:
    html_pages()
    stylesheets = sorted(HTML.rglob("*.css"))
    offenders = [str(c.relative_to(HTML)) for c in stylesheets if CSS_EXTERNAL.search(c.read_text(errors="ignore"))]
    assert not offenders, f"stylesheets with external url()/@import: {offenders}"


def test_mathjax_and_widget_scripts_are_vendored() -> None:
    html_pages()
    vendor = HTML / "_static" / "vendor"
    assert (vendor / "mathjax" / "tex-chtml.js").is_file()
    assert (vendor / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    assert (vendor / "require.js").is_file() and (vendor / "html-manager" / "embed-amd.js").is_file()
    page = (HTML / "notebooks" / "01_attention.html").read_text()
    assert 'src="../_static/vendor/mathjax/tex-chtml.js' in page


def test_colab_buttons_point_at_each_notebook() -> None:
    html_pages()
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    owner_and_name = url.removeprefix("https://github.com/")
    for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
        page = (HTML / "notebooks" / f"{notebook.stem}.html").read_text()
        expected = f"https://colab.research.google.com/github/{owner_and_name}/blob/main/notebooks/{notebook.name}"
        assert expected in page, f"{notebook.stem}.html has no Colab button to {expected}"


def test_results_page_is_generated() -> None:
    html_pages()
    page = (HTML / "book" / "results.html").read_text()
    assert "results-table" in page or "No results have been recorded yet" in page


TQDM_METER = re.compile(r"\d+%\|[^|<]*\|\s*\d+/\d+ \[|it/s[,\]]")


def test_progress_bars_stay_in_jupyter_not_in_the_pages() -> None:
    """Training bars ("100% 40/40 [00:00<00:00, 52.94it/s, loss=1.8]") are for a kernel; the printed book has
    none (the executor takes them out of the executed notebooks). A book built executed shows outputs, so
    make test's build is where this bites."""
    pages = [page for page in html_pages() if page.parent.name == "notebooks"]
    assert pages
    offenders = [page.name for page in pages if TQDM_METER.search(page.read_text(encoding="utf-8"))]
    assert not offenders, f"progress bars in {offenders}"
