"""Sphinx configuration: MyST markdown pages and an API reference from the docstrings."""

from __future__ import annotations

import importlib.metadata
import importlib.util

project = "scoped_session"
author = "scoped_session developers"
copyright = "scoped_session developers"
release = importlib.metadata.version("scoped-session")
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Headings get anchors that pages link to as "page.md#heading".
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": True}
# The docs are built from the installed package, with every optional dependency
# (tox -e docs), so that nothing needs mocking.

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"scoped_session {release}"
