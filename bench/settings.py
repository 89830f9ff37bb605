"""Settings of the benchmark project: PostgreSQL database ``cw_bench`` and Redis DB 13."""

import os

import dj_database_url

SECRET_KEY = "bench-only"
USE_TZ = True
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "django_app"]
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/cw_bench"),
        conn_max_age=600,
    )
}

CELERY_BROKER_URL = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/13")

# as docs/configuration.md recommends without a pooler: Django turns psycopg's prepared
# statements off unless OPTIONS says otherwise; with them on, the ledger's statements are
# parsed and planned once per connection
DATABASES["default"]["OPTIONS"] = {"prepare_threshold": 5}

# levers switched off one at a time to measure what each one buys (bench/README.md)
CELERY_WORKFLOWS_LOCAL_CONTINUATIONS = int(os.environ.get("BENCH_LOCAL_CONTINUATIONS", "8"))
if os.environ.get("BENCH_PREPARED_STATEMENTS", "1") == "0":
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = None  # Django's default
