"""A new user's first hour, done for real: the README alone takes a fresh project to a
completed workflow.

The package is built as a wheel and installed without dev extras into a virtualenv made here;
``django-admin startproject`` makes the project; the README's getting-started files are written
into it verbatim; the worker is the README's ``celery -A shop worker`` on real Redis, the site
is ``runserver``, the database PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from celery_workflows.testing import wait_for
from tests.readme import project_files, shell_lines

ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_URL = os.environ.get("README_BROKER_URL", "redis://127.0.0.1:6379/10")

#: appended after the README's settings: this test's own database and Redis database
TEST_OVERRIDES = """
# -- the acceptance test's own database and broker database
import os  # noqa: E402

DATABASES["default"]["NAME"] = os.environ["SHOP_DB_NAME"]
CELERY_BROKER_URL = os.environ["SHOP_BROKER_URL"]
"""


#: variables of the test session that a new user's shell does not have
OUR_ENVIRONMENT = {"PYTHONPATH", "DJANGO_SETTINGS_MODULE", "DATABASE_URL", "CELERY_BROKER_URL"}


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the built wheel and a PostgreSQL driver - nothing else."""
    base = tmp_path_factory.mktemp("new-user")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # sdist first, then the wheel built from it: what PyPI users get, and nothing stale
    run([sys.executable, "-m", "build", "--outdir", str(base / "dist")], ROOT, env)
    (wheel,) = (base / "dist").glob("celery_workflows-*.whl")
    run([sys.executable, "-m", "venv", str(base / "venv")], base, env)
    pip = str(base / "venv" / "bin" / "pip")
    run([pip, "install", "-q", str(wheel), "psycopg[binary]"], base, env)
    return base / "venv"


def test_the_wheel_carries_migrations_templates_types_and_its_license(venv: Path) -> None:
    script = """
import importlib.metadata as m, json, pathlib
import celery_workflows, django_app
dist = m.distribution("celery-workflows")
app = pathlib.Path(django_app.__file__).parent
print(json.dumps({
    "license": dist.metadata["License-Expression"],
    "classifiers": dist.metadata.get_all("Classifier"),
    "files": [str(f) for f in dist.files],
    "migrations": sorted(p.name for p in (app / "migrations").glob("0*.py")),
    "templates": sorted(str(p.relative_to(app)) for p in (app / "templates").rglob("*.html")),
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = json.loads(run([str(venv / "bin" / "python"), "-c", script], venv, env))
    assert found["license"] == "MIT"
    assert any(f.endswith("licenses/LICENSE") for f in found["files"])
    assert "Framework :: Django :: 5.2" in found["classifiers"]
    assert "Programming Language :: Python :: 3.12" in found["classifiers"]
    for typed in ("celery_workflows/py.typed", "django_app/py.typed"):
        assert typed in found["files"]
    in_repo = sorted(p.name for p in (ROOT / "django_app" / "migrations").glob("0*.py"))
    assert found["migrations"] == in_repo
    in_repo_templates = sorted(
        str(p.relative_to(ROOT / "django_app"))
        for p in (ROOT / "django_app" / "templates").rglob("*.html")
    )
    assert found["templates"] == in_repo_templates and in_repo_templates


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    name = f"cw_readme_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield name
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def project(venv: Path, database: str) -> tuple[Path, dict[str, str]]:
    """``django-admin startproject shop``, ``startapp orders``, then the README's files."""
    base = venv.parent
    env = {
        **{k: v for k, v in os.environ.items() if k not in OUR_ENVIRONMENT},
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "SHOP_DB_NAME": database,
        "SHOP_BROKER_URL": BROKER_URL,
    }
    run(["django-admin", "startproject", "shop"], base, env)
    root = base / "shop"
    run(["python", "manage.py", "startapp", "orders"], root, env)
    for file in project_files():
        target = root / file.path
        if file.append:
            target.write_text(target.read_text() + "\n" + file.code)
        else:
            target.write_text(file.code)
    settings = root / "shop" / "settings.py"
    settings.write_text(settings.read_text() + TEST_OVERRIDES)
    redis.Redis.from_url(BROKER_URL).flushdb()
    run(["python", "manage.py", "migrate"], root, env)
    return root, env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(cmd: list[str], root: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def status_of(root: Path, env: dict[str, str], id_or_key: str) -> dict[str, object]:
    out = run(["python", "manage.py", "workflows", "status", id_or_key, "--json"], root, env)
    return dict(json.loads(out))


def test_the_readme_commands_are_the_ones_this_test_runs() -> None:
    commands = shell_lines()
    assert 'pip install celery-workflows "psycopg[binary]"' in commands
    for command in (
        "python manage.py startapp orders",
        "python manage.py migrate",
        "celery -A shop worker -l INFO",
        "python manage.py runserver",
        "python manage.py workflows status o-1",
    ):
        assert command in commands


@pytest.mark.worker
def test_a_new_project_built_from_the_readme_completes_an_order(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    worker = start(["celery", "-A", "shop", "worker", "-l", "INFO"], root, env, root / "w.log")
    port = free_port()
    site = start(
        ["python", "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        root,
        env,
        root / "site.log",
    )
    try:
        url = f"http://127.0.0.1:{port}/orders/"
        wait_for(lambda: _listening(port), timeout=30, message="runserver did not start")
        code, reply = post(url, b'{"orderId": "o-1", "items": ["book"]}')
        assert code == 202, reply
        by_key = wait_for(
            lambda: _final(status_of(root, env, "o-1")),
            timeout=60,
            interval=0.5,
            message=f"order o-1 never finished; worker log:\n{(root / 'w.log').read_text()}",
        )
        assert by_key["status"] == "completed"
        assert by_key["correlation_id"] == reply["workflow"]
        assert by_key["business_key"] == "o-1"
        steps = [h["name"] for h in by_key["history"] if h["kind"] == "job"]  # type: ignore[union-attr,index]
        assert steps == ["order.validateInventory", "order.processPayment"]
        assert status_of(root, env, reply["workflow"])["status"] == "completed"

        code, reply = post(url, b'{"orderId": "o-2"}')
        assert code == 400 and "items" in reply["error"]
    finally:
        stop(site)
        stop(worker)


def test_manage_py_check_names_a_subscription_to_an_undeclared_queue(
    project: tuple[Path, dict[str, str]],
) -> None:
    root, env = project
    workflows = root / "orders" / "workflows.py"
    original = workflows.read_text()
    workflows.write_text(original + '\norders.subscribe("paymentProcessed", enqueue="shipIt")\n')
    try:
        done = subprocess.run(
            ["python", "manage.py", "check"], cwd=root, env=env, capture_output=True, text=True
        )
    finally:
        workflows.write_text(original)
    assert done.returncode != 0
    assert "celery_workflows.E001" in done.stderr
    assert "'order.shipIt'" in done.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _final(status: dict[str, object]) -> dict[str, object] | None:
    return status if status["status"] not in ("running", "waiting") else None
