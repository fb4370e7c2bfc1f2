"""Sphinx configuration: Markdown pages (MyST), API pages from docstrings, generated config tables."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

project = "mlsim"
author = "mlsim developers"
extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
html_theme = "alabaster"
autodoc_typehints = "description"
autodoc_member_order = "bysource"
myst_heading_anchors = 3
suppress_warnings = ["myst.xref_missing"]


def _generate(app) -> None:
    """Write the configuration references from the schemas in the code (never by hand)."""
    from _gen import write_config_reference

    write_config_reference(HERE / "_generated")


def setup(app) -> None:
    """Regenerate the config tables before every build."""
    app.connect("builder-inited", _generate)
