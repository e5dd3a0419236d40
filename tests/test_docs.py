"""The documentation site builds with ``mkdocs build --strict`` and every page is reachable from the nav.

``--strict`` turns every warning into an error: a broken link or anchor, a page
left out of the nav (``validation.omitted_files: warn`` in ``mkdocs.yml``), a
docstring mkdocstrings cannot parse, an API page naming a module that does not
import. The build needs the ``docs`` packages (part of the ``test`` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SUBPACKAGES = ("core", "io", "data", "prompts", "foundation", "adapters", "student", "inference", "training", "ssl",
               "recipes", "evaluation")


def _nav_pages(entries) -> list[str]:
    """Every page path named in a (nested) mkdocs nav."""
    pages: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages.extend(_nav_pages(value) if isinstance(value, list) else [value])
    return pages


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = _nav_pages(_config()["nav"])
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(set(nav) - set(pages)) == [], "nav entries without a page under docs/"
    assert sorted(set(pages) - set(nav)) == [], "pages under docs/ missing from the nav in mkdocs.yml"
    assert len(nav) == len(set(nav)), "a page appears twice in the nav"


def test_api_reference_has_one_page_per_subpackage() -> None:
    for name in SUBPACKAGES:
        page = DOCS / "api" / f"{name}.md"
        assert f"::: medadapt.{name}" in page.read_text(encoding="utf-8"), page


def test_site_builds_without_warnings(tmp_path: Path) -> None:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(ROOT / "mkdocs.yml"),
         "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    site = tmp_path / "site"
    assert (site / "index.html").is_file()
    for name in SUBPACKAGES:  # mkdocstrings rendered each subpackage's API, not an empty page
        html = (site / "api" / name / "index.html").read_text(encoding="utf-8")
        assert f'id="medadapt.{name}.' in html, f"api/{name}: no documented members rendered"
