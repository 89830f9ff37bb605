"""``make admin``: the Django admin on the database ``make demo`` filled, with a worker behind it.

Creates the superuser ``demo`` (password ``demo``), the ``managers`` group (who may approve
large orders) with its member ``manager`` (password ``manager``), and ``clerk`` (password
``clerk``, who sees the same pages but may not approve) if they do not exist, starts the embedded
broker and a worker (so approving an order in the admin carries it on), and runs the site on
http://127.0.0.1:8000/admin/ until you press Ctrl-C. Honours ``CELERY_BROKER_URL`` and
``DATABASE_URL`` like the demo.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from types import FrameType

from demo import HERE, PATHS, shop_with_a_worker

PORT = os.environ.get("ADMIN_PORT", "8000")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


#: what the shop's staff see: runs, their steps and data, dead letters, orders
STAFF_PERMISSIONS = [
    "view_workflowrun",
    "decide_workflowrun",
    "view_job",
    "view_event",
    "view_deadletter",
    "view_order",
]


def staff_users() -> None:
    """``manager`` in the ``managers`` group (the large orders' gate names it) and ``clerk``
    outside it, both with the same permissions: only the manager gets the Approve button."""
    from django.contrib.auth.models import Group, Permission, User

    perms = Permission.objects.filter(codename__in=STAFF_PERMISSIONS)
    managers, _ = Group.objects.get_or_create(name="managers")
    Group.objects.get_or_create(name="directors")
    for name, group in (("manager", managers), ("clerk", None)):
        if User.objects.filter(username=name).exists():
            continue
        user = User.objects.create_user(name, password=name, is_staff=True)
        user.user_permissions.set(perms)
        if group is not None:
            user.groups.add(group)


def main() -> int:
    # `kill` (or a supervisor) stops it like Ctrl-C: the server, then the worker and broker
    signal.signal(signal.SIGTERM, _stop)
    with shop_with_a_worker():
        from django.contrib.auth.models import User

        if not User.objects.filter(username="demo").exists():
            User.objects.create_superuser("demo", "demo@example.com", "demo")
        staff_users()
        print(f"\n  Admin: http://127.0.0.1:{PORT}/admin/   user: demo   password: demo")
        print("         manager / manager approves large orders; clerk / clerk may not")
        print(f"  Runs:  http://127.0.0.1:{PORT}/admin/celery_workflows/workflowrun/")
        print("  Stop:  Ctrl-C\n")
        # --insecure: the development server serves the admin's static files with DEBUG off
        server = [
            sys.executable,
            str(HERE / "manage.py"),
            "runserver",
            f"127.0.0.1:{PORT}",
            "--insecure",
        ]
        try:
            return subprocess.call([*server, "--noreload"], env={**os.environ, **PATHS})
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
