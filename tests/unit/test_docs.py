"""The docs/ guide stays in step with the code: every setting, option and field the code reads
is in the configuration reference, and every link between the guide's pages resolves."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from celery_workflows import Gather, Lifecycle, Limits, RetryStrategy, WorkflowService

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REFERENCE = (DOCS / "configuration.md").read_text()


def section(title: str) -> str:
    start = REFERENCE.index(f"## {title}")
    end = REFERENCE.find("\n## ", start + 1)
    return REFERENCE[start : end if end > 0 else None]


def documented(table: str) -> set[str]:
    """The names in the first column of a section's table."""
    return {
        name
        for row in re.findall(r"^\| ([^|]+) \|", table, re.M)
        for name in re.findall(r"`([\w.]+)", row)
    }


def read_by_code(pattern: str) -> set[str]:
    found: set[str] = set()
    for folder in ("celery_workflows", "django_app"):
        for path in (ROOT / folder).rglob("*.py"):
            found |= set(re.findall(pattern, path.read_text()))
    return found


def test_every_celery_setting_the_code_reads_is_documented():
    read = read_by_code(r"\"(workflows_\w+)\"")  # every such literal names a Celery setting
    assert read >= {"workflows_sweep_interval", "workflows_log_format"}  # the scan works
    assert read <= documented(section("Celery app configuration"))


def test_every_django_setting_the_code_reads_is_documented():
    read = read_by_code(r"getattr\(settings, \"(CELERY_WORKFLOWS_\w+)\"")
    assert read >= {"CELERY_WORKFLOWS_MODULE"}
    assert read <= documented(section("Django settings"))


@pytest.mark.parametrize(
    ("title", "names"),
    [
        ("`Lifecycle`", [f.name for f in dataclasses.fields(Lifecycle)]),
        ("`RetryStrategy`", [f.name for f in dataclasses.fields(RetryStrategy)]),
        (
            "`WorkflowService(name, celery_app, ...)`",
            list(inspect.signature(WorkflowService.__init__).parameters)[3:],
        ),
        (
            "`@service.queue_worker(name, description, ...)`",
            list(inspect.signature(WorkflowService.queue_worker).parameters)[3:],
        ),
        ("`Limits`", [f.name for f in dataclasses.fields(Limits)]),
        ("`Gather`", [f.name for f in dataclasses.fields(Gather)]),
        (
            "`service.join(events, ...)`",
            list(inspect.signature(WorkflowService.join).parameters)[2:],
        ),
        (
            "`service.subscribe(event, ...)`",
            list(inspect.signature(WorkflowService.subscribe).parameters)[2:],
        ),
        (
            "`service.schedule(name, ...)`",
            list(inspect.signature(WorkflowService.schedule).parameters)[2:],
        ),
    ],
)
def test_every_option_and_field_is_in_the_reference(title, names):
    assert names, title
    assert set(names) <= documented(section(title)), title


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)}


PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md", ROOT / "CHANGELOG.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_to_a_file_and_heading(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"\w+://", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        assert path.exists(), f"{page.name}: broken link {target}"
        if anchor:
            assert anchor in anchors(path), f"{page.name}: no heading for #{anchor} in {file}"
