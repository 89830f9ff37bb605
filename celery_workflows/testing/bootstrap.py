"""``python -m celery_workflows.testing.bootstrap -A app worker ...``: ``celery``, pointed at
the test database and following the test's clock and fault plan.

pytest-django creates a test database (``test_<name>``) and switches the test process to it by
changing ``settings.DATABASES`` in memory; a worker subprocess started from the same settings
would use the real database. This launcher sets the test database's name from
``CELERY_WORKFLOWS_TEST_DATABASES`` (JSON: alias -> name) before Django or Celery read the
settings, installs the fault plan (:mod:`.faults`), then runs Celery's own command line.
"""

from __future__ import annotations

import json
import os
import sys

#: environment variable holding {database alias: test database name} for worker processes
DATABASES_ENV = "CELERY_WORKFLOWS_TEST_DATABASES"


def main() -> None:
    names = json.loads(os.environ.get(DATABASES_ENV) or "{}")
    if names:
        from django.conf import settings

        for alias, name in names.items():
            settings.DATABASES[alias]["NAME"] = name
    from .faults import install_from_environment

    install_from_environment()
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", *sys.argv[1:]]
    celery_main()


if __name__ == "__main__":
    main()
