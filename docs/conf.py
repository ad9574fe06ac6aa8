"""Sphinx configuration of the steerl documentation (MyST Markdown + sphinx-design)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "src"))

project = "steerl"
author = "the steerl developers"
copyright = "2026, the steerl developers"
extensions = [
    "myst_parser",
    "sphinx_design",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "attrs_inline"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples/*.md"]
html_theme = "alabaster"
html_title = "steerl"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
suppress_warnings = ["myst.header", "design.card_legacy"]


def _write_config_reference() -> None:
    """docs/configuration.md is generated from the pydantic models at every build."""
    from steerl.config_docs import markdown_reference

    target = HERE / "configuration.md"
    text = markdown_reference()
    if not target.is_file() or target.read_text() != text:
        target.write_text(text)


_write_config_reference()
