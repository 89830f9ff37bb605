"""The project's Celery app - the one Celery's "First steps with Django" gives, unchanged.

celery-workflows needs nothing more here: the Django app discovers every installed app's
``workflows`` module when Django starts, in workers and web processes alike.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shopsite.settings")

app = Celery("shopsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
