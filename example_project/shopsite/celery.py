"""The project's Celery app - the one every Django + Celery project already has."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

app = Celery("shopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Celery's Django fixup closes DB connections around every task unless this is set; queue
# workers write the ledger on every job, so reuse connections (they are still health-checked)
app.conf.CELERY_DB_REUSE_MAX = 1000
app.autodiscover_tasks(related_name="workflows")
