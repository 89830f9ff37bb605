"""Every Python block of the guides runs somewhere:

- a block that starts ``# example_project/<file>`` is an excerpt of the example project, kept
  verbatim (checked here) - the example runs in ``tests/e2e/test_example_project.py``;
- docs/canvas.md runs as a module on a real worker (``tests/e2e/test_canvas_guide.py``) and
  docs/testing.md's files in a copy of the example (``tests/acceptance/test_test_kit.py``);
- every other block is run here, each guide's blocks in order as one module in a fresh
  interpreter, on real services declared on the test project's Celery app (the names the
  snippets take as given - ``shop``, the payload models - are set up first): a declaration
  that the API no longer accepts fails the test.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
#: guides whose blocks run in a test of their own
RUN_ELSEWHERE = {"canvas.md", "testing.md"}

#: what the snippets take as given: services and payload models of a shop
GIVEN = """
import os
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.proj.settings")
import django
django.setup()
from django.conf import settings
from django.urls import path
from pydantic import BaseModel
from celery_workflows import WorkflowService
from tests.proj.celery_app import app

shop = WorkflowService("docShop", app)
media = WorkflowService("docMedia", app)
ops = WorkflowService("docOps", app)
settings.PSP_SECRET = "a secret"


class Order(BaseModel):
    orderId: str


class PaymentConfirmed(BaseModel):
    order_id: str


class Captured(BaseModel):
    amount: float


class Reserved(BaseModel):
    items: list[str]


class Album(BaseModel):
    photos: list[str]


class Photo(BaseModel):
    photo: str


class Charge(BaseModel):
    amount: float


class CustomerChange(BaseModel):
    customer_id: str
"""


def blocks(guide: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S)


GUIDES = sorted(p for p in DOCS.glob("*.md") if blocks(p) and p.name not in RUN_ELSEWHERE)


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_every_block_of_the_guide_runs_or_is_a_verbatim_excerpt_of_the_example(guide, tmp_path):
    own = []
    for block in blocks(guide):
        first, _, body = block.partition("\n")
        if first.startswith("# example_project/"):
            source = (ROOT / first[2:].strip()).read_text()
            assert body.rstrip() in source, f"{guide.name}: no longer the example's {first[2:]}"
        else:
            own.append(block)
    if not own:
        return
    module = tmp_path / f"guide_{guide.stem.replace('-', '_')}.py"
    module.write_text(GIVEN + "\n\n" + "\n\n".join(textwrap.dedent(b) for b in own))
    env = {
        **os.environ,
        "DATABASE_URL": "sqlite:///:memory:",
        "PYTHONPATH": str(ROOT),
    }
    ran = subprocess.run(
        [sys.executable, str(module)], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, f"{guide.name}:\n{ran.stderr[-3000:]}"
