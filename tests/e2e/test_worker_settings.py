"""A wrong ``workflows_*`` setting stops ``celery worker`` at start, naming the setting.

Found at start rather than in the middle of a job, where it would fail every attempt of every
queue; the check is the worker's own (a bootstep), so no test-only code path is involved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.worker


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("WORKFLOWS_SWEEP_INTERVAL", "0", "workflows_sweep_interval must be a number of seconds"),
        ("WORKFLOWS_REPUBLISH_AFTER", "-5", "workflows_republish_after must be a number"),
        ("WORKFLOWS_LOCAL_CONTINUATIONS", "-1", "workflows_local_continuations must be an int"),
        ("WORKFLOWS_LOG_FORMAT", "yaml", "workflows_log_format must be one of"),
    ],
)
def test_a_worker_refuses_to_start_with_a_wrong_setting(worker_env, variable, value, message):
    env = {**os.environ, **worker_env, variable: value}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.proj.celery_app", "worker", "-P", "solo",
         "-l", "WARNING", "-Q", "settings.none", "-n", "settings@%h"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert done.returncode != 0
    assert message in done.stderr + done.stdout
