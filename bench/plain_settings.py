"""Settings of the plain-Celery side: the same database and broker, without celery-workflows
(a Django project that runs Celery tasks and nothing else)."""

from bench.settings import CELERY_BROKER_URL, DATABASES, SECRET_KEY, USE_TZ  # noqa: F401

INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
