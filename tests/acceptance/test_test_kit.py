"""The user test kit, used by a test written only from its documentation.

``docs/testing.md``'s files are copied verbatim into a copy of ``example_project`` and run
with pytest there, as a user of the package would: a real worker per test, the project's own
settings on PostgreSQL and Redis, the kit's clock and faults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis

from tests.readme import TESTING_GUIDE, project_files

ROOT = Path(__file__).resolve().parents[2]
BROKER_URL = os.environ.get("TEST_KIT_BROKER_URL", "redis://127.0.0.1:6379/14")

pytestmark = pytest.mark.worker


def test_the_documented_example_tests_pass_in_the_example_project(tmp_path: Path) -> None:
    files = project_files(TESTING_GUIDE.read_text())
    assert {f.path for f in files} == {"pytest.ini", "tests/conftest.py", "tests/test_orders.py"}
    project = tmp_path / "shop"
    shutil.copytree(
        ROOT / "example_project", project, ignore=shutil.ignore_patterns("var", "__pycache__")
    )
    for file in files:
        target = project / file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(file.code)
    redis.Redis.from_url(BROKER_URL).flushdb()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DJANGO_SETTINGS_MODULE")}
    env |= {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/cw_kit_{uuid.uuid4().hex[:8]}",
        "CELERY_BROKER_URL": BROKER_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=project, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert "4 passed" in done.stdout
