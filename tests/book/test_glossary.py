"""Glossary links: every {term} role in a notebook's markdown names an entry of book/glossary.md, and every
chapter links its terms there. No build needed: the glossary and the notebooks are read as text."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
GLOSSARY = ROOT / "book" / "glossary.md"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHAPTERS = [path.stem for path in NOTEBOOKS]  # every chapter, appendices included
MINIMUM_LINKS = 5

TERM_ROLE = re.compile(r"\{term\}`([^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(.+?)\s*<([^<]*?)>$", re.DOTALL)  # Sphinx's `title <target>` (explicit_title_re)


def normalise(term: str) -> str:
    """Sphinx's key for a term: whitespace collapsed, and matched without regard to case."""
    return " ".join(term.split()).lower()


def glossary_terms(text: str) -> list[str]:
    """The terms of the ```{glossary} block: its unindented lines; definitions are indented under them."""
    match = re.search(r"^```\{glossary\}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert match, f"{GLOSSARY.name} has no ```{{glossary}} block"
    return [line.strip() for line in match.group(1).splitlines() if line.strip() and not line[0].isspace()]


def term_targets(markdown: str) -> list[str]:
    """The target of every {term} role: the part in angle brackets, or the whole text when there is none."""
    targets = []
    for content in TERM_ROLE.findall(markdown):
        explicit = EXPLICIT_TITLE.match(content)
        targets.append(explicit.group(2) if explicit else content)
    return targets


def markdown_of(path: Path) -> str:
    notebook = nbformat.read(str(path), as_version=4)
    return "\n\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")


TERMS = glossary_terms(GLOSSARY.read_text(encoding="utf-8"))


def test_the_glossary_parses_into_distinct_terms() -> None:
    assert len(TERMS) >= 40, TERMS
    assert "attention (注意力机制)" in TERMS and "contrastive learning (对比学习)" in TERMS and "CLIP" in TERMS
    duplicates = sorted({term for term in TERMS if [normalise(t) for t in TERMS].count(normalise(term)) > 1})
    assert not duplicates, f"terms defined twice in {GLOSSARY.name}: {duplicates}"


def test_role_targets_are_read_as_sphinx_reads_them() -> None:
    markdown = (
        "{term}`contrastive learning <contrastive learning (对比学习)>` and {term}`CLIP`, "
        "{term}`beam\nsearch <greedy decoding / beam search (贪心解码 / 束搜索)>`; {glue:text}`x` is no term"
    )
    assert term_targets(markdown) == [
        "contrastive learning (对比学习)",
        "CLIP",
        "greedy decoding / beam search (贪心解码 / 束搜索)",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_every_term_link_names_a_glossary_entry(path: Path) -> None:
    known = {normalise(term) for term in TERMS}
    missing = [target for target in term_targets(markdown_of(path)) if normalise(target) not in known]
    assert not missing, f"{path.name} links terms that {GLOSSARY.name} does not define: {missing}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_links_its_terms_to_the_glossary(chapter: str) -> None:
    linked = {normalise(target) for target in term_targets(markdown_of(ROOT / "notebooks" / f"{chapter}.ipynb"))}
    assert len(linked) >= MINIMUM_LINKS, (
        f"{chapter} links {len(linked)} glossary terms ({sorted(linked)}); link the first use of each term the "
        f"chapter uses, at least {MINIMUM_LINKS}: {{term}}`text <term in {GLOSSARY.name}>`"
    )
