"""The Django-side settings of celery-workflows, read in one place with their defaults.

Celery-side settings (sweep interval, re-publish delay, ...) live on the Celery app's config as
``workflows_*``; with the usual ``app.config_from_object("django.conf:settings",
namespace="CELERY")`` they are written ``CELERY_WORKFLOWS_*`` in ``settings.py`` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

#: the module looked up in every installed app for workflow declarations (as admin.py is)
DEFAULT_MODULE = "workflows"


@dataclass(frozen=True)
class AppSettings:
    #: ``CELERY_WORKFLOWS_MODULE``: module name imported from every installed app when Django
    #: starts, so workers, web processes and ``manage.py`` see the same declarations; ``None``
    #: turns discovery off (then import your declarations yourself)
    module: str | None = DEFAULT_MODULE
    #: ``CELERY_WORKFLOWS_SQLITE_WAL``: Django < 5.1 with SQLite shared by worker processes
    sqlite_wal: bool = False

    def __post_init__(self) -> None:
        if self.module is not None and (
            not isinstance(self.module, str) or not self.module.isidentifier()
        ):
            raise ImproperlyConfigured(
                f"CELERY_WORKFLOWS_MODULE must be a module name such as 'workflows' or None, "
                f"got {self.module!r}"
            )


def app_settings() -> AppSettings:
    return AppSettings(
        module=getattr(settings, "CELERY_WORKFLOWS_MODULE", DEFAULT_MODULE),
        sqlite_wal=bool(getattr(settings, "CELERY_WORKFLOWS_SQLITE_WAL", False)),
    )
