from django.apps import AppConfig
from django.conf import settings
from django.utils.module_loading import autodiscover_modules


class CeleryWorkflowsConfig(AppConfig):
    """The ledger, admin and commands of celery-workflows (app label ``celery_workflows``)."""

    name = "django_app"
    label = "celery_workflows"
    verbose_name = "Celery workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery_workflows.store import Store, configure

        from . import checks, sqlite  # noqa: F401 - checks registers the system checks
        from .conf import app_settings
        from .store import DjangoStore

        store: Store = DjangoStore()  # mypy checks the implementation against the protocol
        configure(store)
        conf = app_settings()
        sqlite.install(conf.sqlite_wal)
        if conf.module is not None:
            # every process that starts Django - worker, web, manage.py - sees every
            # declaration, as the admin discovers admin.py
            autodiscover_modules(conf.module)
        if any(
            config.get("BACKEND") == "celery_workflows.contrib.tasks.Backend"
            for config in (getattr(settings, "TASKS", None) or {}).values()
        ):
            # a Django Tasks backend of ours declares its queues; workers need them
            # declared before they consume, even if they never enqueue a task
            from celery_workflows.contrib.tasks import declare_configured_backends

            declare_configured_backends()
