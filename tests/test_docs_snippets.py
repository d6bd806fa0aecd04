"""Every python block of the docs (``docs/**/*.md``) runs as written.

The conventions (markers for named blocks, continuations, files, output and the few
blocks that are not run) are the README's: see ``tests/test_readme.py``. ``tox -e
docs`` runs this file with ``SCOPED_SESSION_SNIPPETS_STRICT=1``, so that a block whose
imports are missing fails there instead of being skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from test_readme import (
    ROOT,
    Block,
    Program,
    blocks_of,
    params,
    programs_of,
    run_in_one_folder,
    run_program,
)

DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.relative_to(DOCS).parts)

#: The most blocks the docs may show without running: each needs a server or an app
#: running elsewhere, and says so in its marker.
MOST_NOT_RUN = 6


def collect() -> tuple[dict[str, list[Program]], list[Block]]:
    programs: dict[str, list[Program]] = {}
    not_run: list[Block] = []
    for page in PAGES:
        page_programs, page_not_run = programs_of(blocks_of(page))
        if page_programs:
            programs[page.name] = page_programs
        not_run += page_not_run
    return programs, not_run


PAGE_PROGRAMS, NOT_RUN = collect()
PROGRAMS = [program for programs in PAGE_PROGRAMS.values() for program in programs]


@pytest.mark.slow  # a subprocess each, some of them a pytest run: tox -e fast leaves them out
@pytest.mark.parametrize("program", params(PROGRAMS))
def test_docs_block_runs(program: Program, tmp_path: Path) -> None:
    run_program(program, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGE_PROGRAMS)
def test_docs_page_runs_twice_in_one_folder(page: str, tmp_path: Path) -> None:
    # As the README's: a reader may run a page's blocks again, and in any order. Each
    # block starts from a database of its own, so pages sharing a folder are fine too.
    run_in_one_folder(PAGE_PROGRAMS[page], tmp_path)


def test_every_docs_block_runs_or_says_why_not() -> None:
    python = [b for page in PAGES for b in blocks_of(page) if b.lang == "python"]
    covered = [b for p in PROGRAMS for b in p.blocks]
    assert sorted(b.where for b in covered + NOT_RUN) == sorted(b.where for b in python)
    assert len(PROGRAMS) >= 20, "the guides' examples run"
    assert len(NOT_RUN) <= MOST_NOT_RUN, [b.where for b in NOT_RUN]


def test_docs_links_exist() -> None:
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#:\s]+\.md)(?:#[^)]*)?\)", text):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
