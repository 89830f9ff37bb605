"""The README's getting-started code, read from the README itself so tests run it verbatim.

A Python block whose first line is ``# <path>`` is the content of that file of the user's
project; ``# <path> (add at the end)`` is appended to the file instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Getting started in an existing project"

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)
_HEADER = re.compile(r"^# (?P<path>[\w./]+\.py)(?P<append> \(add at the end\))?$")


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


def project_files() -> list[ProjectFile]:
    """Every file block of the getting-started section, in order."""
    files = []
    for lang, body in _BLOCK.findall(getting_started()):
        first = body.splitlines()[0]
        header = _HEADER.match(first)
        if lang == "python" and header:
            files.append(ProjectFile(header["path"], body, bool(header["append"])))
    return files


def shell_lines() -> list[str]:
    """The commands of the section's bash blocks, comments stripped."""
    lines = []
    for lang, body in _BLOCK.findall(getting_started()):
        if lang == "bash":
            lines += [line.split("  #")[0].strip() for line in body.splitlines() if line.strip()]
    return lines
