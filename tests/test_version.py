"""The version is written once, and the tests run against the installed distribution."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

import scoped_session

DIST = importlib.metadata.distribution("scoped-session")


def test_version_is_the_distributions() -> None:
    assert scoped_session.__version__ == DIST.version


def test_imported_from_the_distribution() -> None:
    # tox installs a wheel; an editable install (a developer's venv) imports the checkout.
    direct_url = json.loads(DIST.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("scoped_session is installed in editable mode")
    installed = {Path(str(DIST.locate_file(file))).resolve() for file in DIST.files or ()}
    assert Path(scoped_session.__file__).resolve() in installed
