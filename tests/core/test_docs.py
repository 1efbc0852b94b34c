"""The documentation stays true to the code and to the repository: docs/configuration.md is the generator's
output for the current schema, every relative link leads to a file (and heading) that exists, the README
stays short, and nothing points outside the repository."""

import re
from pathlib import Path

import pytest

from rayft_core.schema_docs import REGENERATE, render

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
LINKED_PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md")), REPO / "benchmarks" / "README.md"]

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.S | re.M)
CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
EXPLICIT_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _anchors(page: Path) -> set[str]:
    """The fragments a page answers to: explicit <a id> anchors and GitHub's heading slugs."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    found = set(EXPLICIT_ANCHOR.findall(text))
    counts: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_configuration_reference_is_generated_from_the_schema():
    page = DOCS / "configuration.md"
    assert page.exists(), f"docs/configuration.md is missing; generate it: {REGENERATE}"
    assert page.read_text(encoding="utf-8") == render(), (
        f"docs/configuration.md is out of date with the config schema; regenerate it: {REGENERATE}"
    )


def test_the_generator_covers_every_section_stage_and_tuning_method():
    from rayft_core.config import RunConfig
    from rayft_core.schema_docs import _Walker, json_schema

    walker = _Walker(json_schema(RunConfig))
    text = render()
    unions = {}
    for section, prop in walker.schema["properties"].items():
        assert f'<a id="{section}"></a>' in text, f"section {section} has no table"
        if walker.union(prop):
            unions[section] = [value for value, _ in walker.union(prop)[1]]
            for value in unions[section]:
                assert f'<a id="{section}-{value}"></a>' in text, f"{section}: {value} has no table"
    assert {"stage", "tuning"} <= set(unions), f"tagged unions found: {sorted(unions)}"
    assert {"sft", "dpo", "grpo"} <= set(unions["stage"]) and "lora" in unions["tuning"]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_existing_files(page: Path):
    assert page.exists(), page
    broken = []
    for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
        if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif REPO not in dest.parents and dest != REPO:
            broken.append(f"{target}: outside the repository")
        elif fragment and dest.suffix == ".md" and fragment not in _anchors(dest):
            broken.append(f"{target}: no heading or anchor #{fragment} in {dest.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: broken links:\n  " + "\n  ".join(broken)


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; keep it at most 200 and move detail into docs/"


def test_docs_point_only_inside_the_repository():
    pages = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted(DOCS.rglob("*.md"))]  # images aside
    found = [
        f"{p.relative_to(REPO)}:{i}: {line.strip()}"
        for p in pages
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
        if "../shared" in line or "DESIGN.md" in line
    ]
    assert not found, "the docs name files outside the repository:\n  " + "\n  ".join(found)
