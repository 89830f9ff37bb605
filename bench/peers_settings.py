"""Settings of ``make bench-peers``: the benchmark project, plus Django Tasks on two backends -
the toolkit's (``default``) and django-tasks' database backend (``db``, from the
``django-tasks-db`` package, with its own ``db_worker``)."""

from bench.settings import *  # noqa: F403
from bench.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_tasks", "django_tasks_db"]
TASKS = {
    "default": {
        "BACKEND": "celery_workflows.contrib.tasks.Backend",
        "QUEUES": ["default"],
        "OPTIONS": {"CELERY_APP": "bench.celery_app.app"},
    },
    "db": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]},
}
