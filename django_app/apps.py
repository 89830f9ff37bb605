from django.apps import AppConfig


class CeleryWorkflowsConfig(AppConfig):
    name = "django_app"
    label = "celery_workflows"
    verbose_name = "Celery workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from celery_workflows.store import configure

        from . import checks, sqlite  # noqa: F401 - checks registers the system checks
        from .store import DjangoJobStore

        configure(DjangoJobStore())
        sqlite.install()
