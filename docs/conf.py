"""Sphinx configuration of the documentation site (``make docs``: warnings are errors).

The guides are the Markdown files of this directory (MyST); the API reference is generated
from the docstrings (autodoc), which needs Django set up: the test project's settings on a
throwaway SQLite database do it (nothing is written).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.proj.settings")
os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")

import django  # noqa: E402

django.setup()

project = "celery-workflows"
author = "celery-workflows"
copyright = "2026, celery-workflows"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
# the source directory is the repository's root, so that the guides' links to the README, the
# changelog and the benchmarks resolve on the site as they do on a forge's file view
root_doc = "docs/index"
include_patterns = ["README.md", "CHANGELOG.md", "bench/README.md", "bench/CHAOS.md", "docs/**"]
exclude_patterns = ["docs/_build", "**/.venv*"]
# the site's front door (index.html at its root) leads to the guide's index
html_extra_path = ["_root"]
html_theme = "furo"
html_title = "celery-workflows"

# "#approval-gate" links between guides
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
