"""Every relative link in README.md and docs/*.md names a file that exists, and every #anchor a
heading that exists (GitHub's rule for heading ids); the README links every docs page; and the
files, tests and `python -m` modules the pages name exist."""

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`]*`")
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def prose(text: str) -> str:
    """The text outside fenced code blocks, with code spans emptied (links live in neither)."""
    return CODE_SPAN.sub("``", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The ids GitHub gives the headings of a markdown file: lower case, punctuation dropped,
    spaces as hyphens, a repeated id suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    ids = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:, ...
    ]


def test_the_pages_have_links_to_check():
    assert len(PAGES) > 1, "no docs/*.md pages found"
    assert len(relative_links(ROOT / "README.md")) >= len(PAGES) - 1


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    broken = []
    for target in relative_links(page):
        file_part, _, anchor = target.partition("#")
        path = (page.parent / unquote(file_part)).resolve() if file_part else page
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif anchor and path.suffix == ".md" and unquote(anchor).lower() not in anchors(path):
            broken.append(f"{target}: no heading with id #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


def test_the_readme_links_every_docs_page():
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")
    }
    orphans = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


CODE_PATH = re.compile(r"`((?:src|pipeline|tests|benchmarks|classifier|\.github)/[\w/.-]+\.(?:py|ya?ml))(?:::(\w+))?`")
MODULE = re.compile(r"python -m ((?:classifier|pipeline)(?:\.\w+)*)")


def module_exists(name: str) -> bool:
    base = ROOT / ("src" if name.startswith("classifier") else "") / name.replace(".", "/")
    return base.with_suffix(".py").exists() or any((base / f).exists() for f in ("__init__.py", "__main__.py"))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_code_the_pages_name_exists(page):
    """A file, test or `python -m` module the docs name moves with the code, or this fails."""
    text = page.read_text(encoding="utf-8")
    missing = []
    for path, test in CODE_PATH.findall(text):
        file = ROOT / ("src/" + path if path.startswith("classifier/") else path)
        if not file.exists():
            missing.append(f"{path}: no such file")
        elif test and not re.search(rf"^\s*(?:async )?def {test}\(", file.read_text(encoding="utf-8"), re.M):
            missing.append(f"{path}::{test}: no such test")
    missing += [f"python -m {m}: no such module" for m in MODULE.findall(text) if not module_exists(m)]
    assert not missing, f"{page.relative_to(ROOT)} names code that is not there:\n" + "\n".join(missing)


def test_anchor_ids_follow_githubs_rule(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# How `make run` runs it\n\n## The gpu pool, honest\n\n## Notes\n\n## Notes\n\n"
        "```\n# not a heading\n```\n"
    )
    assert anchors(page) == {"how-make-run-runs-it", "the-gpu-pool-honest", "notes", "notes-1"}
