"""Code from the README and the docs, read from the pages themselves so tests run it verbatim.

A Python (or ini) block whose first line is ``# <path>`` is the content of that file of the
user's project; ``# <path> (add at the end)`` is appended to the file instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "## Getting started in an existing project"
TESTING_GUIDE = ROOT / "docs" / "testing.md"

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
_HEADER = re.compile(r"^# (?P<path>[\w./]+\.(?:py|ini))(?P<append> \(add at the end\))?$")


@dataclass(frozen=True)
class ProjectFile:
    path: str
    code: str
    append: bool


def getting_started() -> str:
    text = README.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def project_files(text: str | None = None) -> list[ProjectFile]:
    """Every file block of ``text`` (default: the README's getting-started section), in order."""
    files = []
    for lang, body in _BLOCK.findall(getting_started() if text is None else text):
        first = body.splitlines()[0]
        header = _HEADER.match(first)
        if lang in ("python", "ini") and header:
            files.append(ProjectFile(header["path"], body, bool(header["append"])))
    return files


def shell_lines() -> list[str]:
    """The commands of the section's bash blocks, comments stripped."""
    lines = []
    for lang, body in _BLOCK.findall(getting_started()):
        if lang == "bash":
            lines += [line.split("  #")[0].strip() for line in body.splitlines() if line.strip()]
    return lines
