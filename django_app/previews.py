"""What the admin shows of a stored JSON value: all of it, or - past a size no page should
carry - its beginning, its size and where to find the whole.

A run page shows a step's payload in its timeline and sends it back in its rerun and re-drive
forms; shown whole and indented, a 1 MiB payload made a 20 MB page. Past
:data:`PREVIEW_CHARS` a value is shown as the start of its compact JSON; the forms then send
nothing back, which keeps the stored payload as it is.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

#: characters of a value's JSON a page shows before it cuts it short
PREVIEW_CHARS = 4096


@dataclass(frozen=True)
class Preview:
    """A value's JSON as a page shows it (``str()`` is the text)."""

    text: str
    #: the text is the whole value
    whole: bool
    #: characters of the value's compact JSON
    size: int

    def __str__(self) -> str:
        return self.text

    @property
    def size_text(self) -> str:
        if self.size >= 1024 * 1024:
            return f"{self.size / (1024 * 1024):.1f} MB"
        return f"{self.size / 1024:.0f} KB" if self.size >= 1024 else f"{self.size} bytes"


def preview(value: Any, indent: int | None = 2) -> Preview:
    """``value`` as JSON for a page: indented when it is short enough, else its beginning."""
    compact = json.dumps(value)
    if len(compact) <= PREVIEW_CHARS:
        return Preview(json.dumps(value, indent=indent) if indent else compact, True, len(compact))
    return Preview(compact[:PREVIEW_CHARS], False, len(compact))
