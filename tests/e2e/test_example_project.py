"""The README's ``make demo`` works with nothing but Python: SQLite and an embedded Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.worker
def test_demo_runs_the_order_workflow_on_the_embedded_default(tmp_path):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"CELERY_BROKER_URL", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"}
    }
    env["EXAMPLE_VAR_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, str(ROOT / "example_project" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "broker:   redis+socket://" in out and "database: sqlite" in out
    assert "== in stock: workflow" in out and "completed" in out
    assert "#1 failed (GatewayTimeout: payment gateway timed out), #2 succeeded" in out
    assert "== card declined, compensated: workflow" in out
    assert "released stock of A-103" in out
    assert "== after redrive: workflow" in out and "confirmation sent for A-103" in out
