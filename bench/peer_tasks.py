"""The Django Tasks side of ``make bench-peers``: one standard Task, run by the toolkit's Tasks
backend (``default``) or by django-tasks' database backend (``using(backend="db")``)."""

from django_tasks import task

from bench.work import work


@task()
def tasks_step(counter_key: str, io_ms: float) -> None:
    work(counter_key, io_ms)
