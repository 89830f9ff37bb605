"""docs/canvas.md is run as written: its Python blocks, in order, make one module (with
``proj.celery`` standing for the reader's Celery app), which a real worker imports; the
order it places through the workflow completes every step the canvas chain had."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from celery_workflows import PayloadValidationError, get_workflow
from celery_workflows.testing import WorkerProcess, wait_for
from django_app.models import Job

pytestmark = [pytest.mark.worker, pytest.mark.usefixtures("transactional_db")]

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "canvas.md"


def guide_module(directory: Path) -> str:
    """Write the guide's blocks as ``canvas_guide.py`` in ``directory``; return its name."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.S)
    assert len(blocks) >= 4, "the guide lost its examples"
    (directory / "canvas_guide.py").write_text("\n\n".join(blocks))
    (directory / "proj").mkdir()
    (directory / "proj" / "__init__.py").write_text("")
    (directory / "proj" / "celery.py").write_text("from tests.proj.celery_app import app\n")
    return "canvas_guide"


@pytest.fixture(scope="module")
def guide(tmp_path_factory):  # type: ignore[no-untyped-def]
    directory = tmp_path_factory.mktemp("guide")
    name = guide_module(directory)
    sys.path.insert(0, str(directory))
    try:
        yield directory, importlib.import_module(name)
    finally:
        sys.path.remove(str(directory))


def test_the_guides_workflow_runs_the_unchanged_tasks_step_by_step(guide, worker_env):
    directory, module = guide
    queues = [spec.qualified_name for spec in module.billing.queues.values()]
    root = str(Path(__file__).resolve().parents[2])
    worker = WorkerProcess(
        "tests.proj.celery_app",
        queues,
        concurrency=2,
        env={
            **worker_env,
            "TEST_EXTRA_MODULES": "canvas_guide",
            "PYTHONPATH": f"{directory}:{root}",
        },
        hostname="guide@%h",
        log_path=str(directory / "worker.log"),
    ).start()
    try:
        worker.wait_ready(timeout=90)  # the timeouts below count from a consuming worker
        correlation_id = module.place_order("o-guide", "book", 12.5)
        run = wait_for(
            lambda: (r := get_workflow(correlation_id)).status == "completed" and r,
            timeout=30,
            message=f"the order never completed: {(directory / 'worker.log').read_text()[-2000:]}",
        )
    finally:
        worker.stop()
    results = {
        job.queue: job.result
        for job in Job.objects.filter(correlation_id=correlation_id)
        if job.queue != "billing.notify"
    }
    assert results == {
        "billing.reserve": {"order_id": "o-guide", "amount": 12.5, "reservation": "R-o-guide"},
        "billing.charge": {"order_id": "o-guide", "payment": "P-o-guide-12.50"},
        "billing.ship": {"order_id": "o-guide", "tracking": "TRK-o-guide"},
    }
    notices = Job.objects.filter(correlation_id=correlation_id, queue="billing.notify")
    assert sorted(job.result for job in notices) == [
        "email sent for o-guide",
        "sms sent for o-guide",
    ]
    assert run.business_key == "o-guide"


def test_the_guides_promises_about_arguments_and_retries_hold(guide):
    _, module = guide
    with pytest.raises(PayloadValidationError, match="amount"):
        module.billing.enqueue("charge", {"order_id": "o-1"})  # refused: nothing written
    with pytest.raises(PayloadValidationError, match="colour"):
        module.billing.enqueue("ship", {"order_id": "o-1", "colour": "red"})
    charge = module.billing.queue("charge").lifecycle
    assert charge.max_attempts == 5  # max_retries=4, plus the first attempt
    assert (charge.retry.initial_delay, charge.retry.max_delay, charge.retry.jitter) == (
        1,
        30,
        "full",
    )
    assert module.billing.queue("ship").lifecycle.max_attempts == 1  # no autoretry_for
    assert module.charge.delay  # still a Celery task for every other caller
