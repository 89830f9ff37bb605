"""Settings of the test project: PostgreSQL by default, SQLite when DATABASE_URL says so.

Worker subprocesses started by the tests get ``DATABASE_URL`` pointing at the *test* database
and ``CELERY_BROKER_URL`` at the session's own Redis database.
"""

import os
import tempfile

import dj_database_url
import django

SECRET_KEY = "tests-only"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
STATIC_URL = "static/"
ROOT_URLCONF = "tests.proj.urls"
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "django_app",
    "tests.proj",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASE_URL = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
DATABASES = {
    "default": (
        # Django's dummy backend (no database at all): for checks that must not need one
        {"ENGINE": "django.db.backends.dummy"}
        if DATABASE_URL == "dummy://"
        else dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)
    )
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # worker processes must see the test database: it has to be a file, with WAL so that
    # readers do not block the writer, and IMMEDIATE transactions so writers queue up
    _db["OPTIONS"] = {
        "timeout": 30,
    }
    CELERY_WORKFLOWS_SQLITE_WAL = django.VERSION < (5, 1)  # no init_command before 5.1
    if django.VERSION >= (5, 1):
        _db["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
        _db["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    _db["TEST"] = {
        "NAME": os.environ.get(
            "TEST_SQLITE_PATH",
            os.path.join(tempfile.gettempdir(), f"cw-test-{os.getpid()}.sqlite3"),
        )
    }
else:
    _db["TEST"] = {"NAME": os.environ.get("TEST_DB_NAME", "test_celery_workflows")}
if _db["ENGINE"] == "django.db.backends.postgresql":
    # docs/configuration.md: prepared statements on, as without a pooler; "none" is Django's
    # default (the PgBouncer test runs its worker so, as PgBouncer < 1.21 needs)
    _threshold = os.environ.get("DATABASE_PREPARE_THRESHOLD", "5")
    _db["OPTIONS"] = {"prepare_threshold": None if _threshold == "none" else int(_threshold)}

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/11")
# Redis keeps ten priority levels instead of kombu's four (celery_workflows/priorities.py)
CELERY_BROKER_TRANSPORT_OPTIONS = {"priority_steps": list(range(10))}
# the README's recommendation: keep connections between tasks (dropped ones are reconnected)
CELERY_DB_REUSE_MAX = 1000
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"celery_workflows": {"handlers": ["console"], "level": "INFO"}},
}

# Django Tasks (django.tasks on Django 6, the django-tasks backport before) run by the toolkit
if django.VERSION < (6, 0):
    INSTALLED_APPS.append("django_tasks")
TASKS = {
    "default": {
        "BACKEND": "celery_workflows.contrib.tasks.Backend",
        "QUEUES": ["default", "emails", "ranked", "queue-1"],
        "OPTIONS": {
            "CELERY_APP": "tests.proj.celery_app.app",
            "MAX_ATTEMPTS": 3,
            "VISIBILITY_TIMEOUT": 30,
            "INITIAL_DELAY": 0.3,
            "MAX_DELAY": 1,
        },
    }
}
