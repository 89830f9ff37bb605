"""The Celery app of the test project, configured the way a Django project does it."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.proj.settings")

app = Celery("tests")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
    workflows_sweep_interval=float(os.environ.get("WORKFLOWS_SWEEP_INTERVAL", "0.2")),
    workflows_republish_after=float(os.environ.get("WORKFLOWS_REPUBLISH_AFTER", "3")),
    workflows_local_continuations=int(os.environ.get("WORKFLOWS_LOCAL_CONTINUATIONS", "8")),
    workflows_log_format=os.environ.get("WORKFLOWS_LOG_FORMAT", "text"),
    workflows_idle_run_grace=float(os.environ.get("WORKFLOWS_IDLE_RUN_GRACE", "10")),
)

from tests.proj import tracing  # noqa: E402,F401,I001  - before any span is made
from tests.proj import atomic, chaos, fanin, flows, interleavings, saga, workflows  # noqa: E402, F401

if not os.environ.get("DATABASE_URL", "").startswith("mysql"):
    # limits need PostgreSQL or SQLite (on MariaDB every command would stop at E006)
    from tests.proj import limited  # noqa: F401

# modules a test writes and its workers import (tests/e2e/test_canvas_guide.py: a guide's code)
for _module in filter(None, os.environ.get("TEST_EXTRA_MODULES", "").split(",")):
    __import__(_module)
