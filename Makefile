# Every target sets up its own virtualenv first, so each works on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PG_URL ?= postgres://postgres@127.0.0.1:5432/test
SQLITE_TEST_DB ?= /tmp/celery-workflows-test.sqlite3

#: how many of the suites run side by side: each mostly waits on its workers (whose sweepers
#: poll every 0.2 s); on 2 cores more than two at once starve the timing-sensitive tests
TEST_JOBS ?= 2
#: the suite that runs once per database; tests/acceptance (a fresh install) runs once
SUITE ?= tests/unit tests/integration tests/e2e
#: Django 6 needs Python >= 3.12: pyenv's, or one on PATH
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
VENV6 ?= .venv-django6
#: on Django 6 (django.tasks, not the backport): the unit tests, the Django Tasks backend and
#: its contract, and the event-driven workflows end to end
DJANGO6_SUITE ?= tests/unit tests/e2e/test_django_tasks.py tests/e2e/test_tasks_contract.py \
	tests/e2e/test_events.py

.PHONY: demo admin docs test services test-postgres test-sqlite test-rabbitmq test-package test-mariadb chaos \
	test-django6 \
	lint bench bench-peers bench-processes bench-network bench-scaling bench-admin clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

$(VENV6)/.installed: pyproject.toml
	@test -n "$(PYTHON312)" || { echo "Django 6 needs Python 3.12: install it (pyenv install 3.12) or set PYTHON312"; exit 1; }
	$(PYTHON312) -m venv $(VENV6)
	$(VENV6)/bin/pip install -q --upgrade pip
	$(VENV6)/bin/pip install -q -e '.[dev]' 'django>=6.0,<7'
	touch $@

demo: $(VENV)/.installed
	$(PY) example_project/demo.py

# the Django admin on the demo's database (user demo / password demo), with a worker behind it
admin: $(VENV)/.installed
	cd example_project && ../$(PY) admin_site.py

# the whole suite: on PostgreSQL, on SQLite (the embedded default), the broker-facing part on
# RabbitMQ and the Django 6 part - side by side, since each has a test database, Redis
# databases and a vhost of its own and mostly waits on workers (~14 minutes on 2 cores, the
# PostgreSQL suite the longest; each suite's output appears when it ends) - then the README's
# getting-started in a fresh virtualenv. `services` starts (or installs) what it needs first.
SIDE_BY_SIDE ?= test-postgres test-sqlite test-rabbitmq test-django6
test: services $(VENV)/.installed $(VENV6)/.installed
	@echo "running $(SIDE_BY_SIDE) side by side; each prints its results when it ends"
	$(MAKE) -j$(TEST_JOBS) --output-sync=target $(SIDE_BY_SIDE)
	$(MAKE) test-package

# Redis, PostgreSQL, RabbitMQ, Chromium, PgBouncer: started if stopped, installed if missing
services:
	bash .ci/services

test-postgres: $(VENV)/.installed
	DATABASE_URL=$(PG_URL) CELERY_BROKER_URL=redis://127.0.0.1:6379/11 \
	$(PY) -m pytest $(SUITE) $(PYTEST_ARGS)

test-sqlite: $(VENV)/.installed
	DATABASE_URL=sqlite:///$(SQLITE_TEST_DB) TEST_SQLITE_PATH=$(SQLITE_TEST_DB) \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/12 $(PY) -m pytest $(SUITE) $(PYTEST_ARGS)

# the broker-facing part of the worker-level suite again with RabbitMQ as the broker (a fresh
# vhost per run): delivery and re-publishing, crashes and redelivery, bad messages, events,
# continuation, pools, pausing queues, redrive and sagas. The other e2e modules (approvals,
# states, schedules, versions, Django Tasks, async handlers, logs and traces, settings) use
# the same publish and consume path and run on Redis only, to keep make test short.
RABBIT_VHOST ?= cw-tests
RABBIT_SUITE ?= $(addprefix tests/e2e/test_,bad_messages.py continuation.py crashes.py \
	delivery.py events.py job_controls.py operations.py pools.py queue_controls.py \
	queue_workers.py sagas.py priorities.py limits.py)
test-rabbitmq: $(VENV)/.installed
	rabbitmqctl delete_vhost $(RABBIT_VHOST) >/dev/null 2>&1 || true
	rabbitmqctl add_vhost $(RABBIT_VHOST) >/dev/null
	rabbitmqctl set_permissions -p $(RABBIT_VHOST) guest ".*" ".*" ".*" >/dev/null
	DATABASE_URL=$(PG_URL) TEST_DB_NAME=test_cw_rabbitmq TEST_REDIS_URL=redis://127.0.0.1:6379/2 \
	CELERY_BROKER_URL=amqp://guest:guest@127.0.0.1:5672/$(RABBIT_VHOST) \
	$(PY) -m pytest $(RABBIT_SUITE) $(PYTEST_ARGS)

# chaos: workers SIGKILLed, the broker wiped, DB connections cut, crashes after the last
# outcome, fuzzed messages - while real workflows run; prints one CHAOS line per scenario
chaos: services $(VENV)/.installed
	rabbitmqctl delete_vhost cw-chaos >/dev/null 2>&1 || true
	rabbitmqctl add_vhost cw-chaos >/dev/null
	rabbitmqctl set_permissions -p cw-chaos guest ".*" ".*" ".*" >/dev/null
	DATABASE_URL=$(PG_URL) TEST_DB_NAME=test_cw_chaos CELERY_BROKER_URL=redis://127.0.0.1:6379/3 \
	TEST_REDIS_URL=redis://127.0.0.1:6379/4 CHAOS_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/cw-chaos \
	$(PY) -m pytest tests/chaos -s -p no:cacheprovider $(PYTEST_ARGS)
	# a longer search of random interleavings against the ledger (make test runs 20 examples)
	DATABASE_URL=$(PG_URL) TEST_DB_NAME=test_cw_interleavings INTERLEAVINGS_EXAMPLES=300 \
	$(PY) -m pytest tests/integration/test_run_interleavings.py -p no:cacheprovider -p no:logging \
	$(PYTEST_ARGS)

# the Django Tasks backend, the unit tests and event-driven workflows on Django 6 (Python 3.12)
test-django6: $(VENV6)/.installed
	DATABASE_URL=$(PG_URL) TEST_DB_NAME=test_cw_django6 CELERY_BROKER_URL=redis://127.0.0.1:6379/13 \
	$(VENV6)/bin/python -m pytest $(DJANGO6_SUITE) $(PYTEST_ARGS)

# a new user's project built from the README, on the wheel as built (PostgreSQL + Redis)
test-package: $(VENV)/.installed
	DATABASE_URL=$(PG_URL) $(PY) -m pytest tests/acceptance $(PYTEST_ARGS)

# optional: MariaDB on 127.0.0.1:3306 (root, no password); builds mysqlclient (libmariadb-dev)
test-mariadb: $(VENV)/.installed
	$(VENV)/bin/pip install -q 'mysqlclient>=2.2'
	DATABASE_URL=mysql://root@127.0.0.1:3306/test TEST_DB_NAME=test_cw_mariadb \
	CELERY_BROKER_URL=redis://127.0.0.1:6379/9 $(PY) -m pytest $(PYTEST_ARGS)

# the documentation site: the guides, the README, the changelog and an API reference from the
# docstrings, in docs/_build/html (open index.html); any warning fails the build
docs: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[docs]'
	rm -rf docs/_build/html
	$(PY) -m sphinx -W --keep-going -q -c docs -b html . docs/_build/html
	@echo "docs: file://$(CURDIR)/docs/_build/html/index.html"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check celery_workflows django_app tests
	PYTHONPATH=. $(VENV)/bin/mypy
	DATABASE_URL=sqlite:////tmp/cw-makemigrations.sqlite3 DJANGO_SETTINGS_MODULE=tests.proj.settings \
	PYTHONPATH=. $(PY) -m django makemigrations --check --dry-run

bench: $(VENV)/.installed
	$(PY) bench/run.py

# the toolkit beside the durable peers (procrastinate, django-tasks' database backend) on the
# same PostgreSQL; installs the peers' pinned versions (the `peers` extra) first
bench-peers: services $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[dev,peers]'
	$(PY) bench/peers.py

# one `celery worker -c 4` against two `celery worker -c 2`, both sides (~6 minutes)
bench-processes: services $(VENV)/.installed
	$(PY) bench/processes.py

# workflow4 and jobs_io5ms with PostgreSQL and Redis behind delaying proxies (0.5 ms and 2 ms
# added per round trip), both sides, request flights per step counted (~8 minutes)
bench-network: services $(VENV)/.installed
	$(PY) bench/network.py

# workflow4 with 1, 2 and 4 worker processes and 1k / 10k workflows (takes ~20 minutes)
bench-scaling: $(VENV)/.installed
	cd bench && ../$(PY) scaling.py

# the admin on 1M runs / 5M jobs (generates them once in the cw_bench database)
bench-admin: $(VENV)/.installed
	$(PY) bench/admin_scale.py

clean:
	rm -rf $(VENV) $(VENV6) .pytest_cache .mypy_cache .ruff_cache .tox
