# the Celery app is loaded when Django starts, so @shared_task and declarations use it
from .celery import app as celery_app

__all__ = ("celery_app",)
