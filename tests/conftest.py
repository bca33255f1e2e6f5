"""Shared fixtures. The suite runs twice: DB_DSN selects SQLite or PostgreSQL (see Makefile)."""

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from tasks.worker import WorkerPool

ROOT = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    db = settings.DATABASES["default"]
    if db["ENGINE"] != "django.db.backends.postgresql":
        return
    try:
        psycopg.connect(
            host=db["HOST"],
            port=db["PORT"] or 5432,
            user=db["USER"],
            password=db["PASSWORD"],
            dbname="postgres",
            connect_timeout=5,
        ).close()
    except psycopg.OperationalError as exc:
        where = f"{db['HOST']}:{db['PORT']}"
        if os.environ.get("CI") == "true":
            pytest.exit(f"PostgreSQL at {where} is not reachable and CI=true: {exc}", returncode=1)
        pytest.exit(f"PostgreSQL at {where} is not reachable; skipping the PostgreSQL run (set TEST_DB_DSN)", 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (this run is on SQLite)")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup: None, django_db_blocker: Any) -> None:
    """The test database, plus the side-effects table of tests/handlers.py (not a model: never flushed)."""
    from tests.handlers import SIDE_EFFECTS_TABLE_SQL

    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(SIDE_EFFECTS_TABLE_SQL)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


def subprocess_db_dsn() -> str:
    """A DSN for the test database, for worker subprocesses (call inside a django_db test)."""
    db = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"


class WorkerProcess:
    """A real `manage.py runworkers` subprocess on the test database."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.output = ROOT / "var" / f"worker-{os.getpid()}-{time.monotonic_ns()}.log"
        self.output.parent.mkdir(exist_ok=True)
        self._log = self.output.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "runworkers", *args],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.process.wait(timeout=timeout)

    def logs(self) -> str:
        self._log.flush()
        return self.output.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.logs():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"worker never logged {text!r}:\n{self.logs()[-4000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._log.close()
        self.output.unlink(missing_ok=True)  # failing assertions quote the log; keep var/ clean


@pytest.fixture
def worker_process() -> Iterator[Callable[..., WorkerProcess]]:
    """Start runworkers subprocesses: worker_process("--workers", "3", env={"TASKFLOW_LEASE_SECONDS": "2"})."""
    started: list[WorkerProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        full_env = {
            **os.environ,
            "DB_DSN": subprocess_db_dsn(),
            "TASKFLOW_HANDLERS": "flaky=tests.handlers.flaky,count=tests.handlers.count,block=tests.handlers.block",
            **(env or {}),
        }
        full_env.pop("DATABASE_URL", None)
        process = WorkerProcess(list(args), full_env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def worker_pool() -> Iterator[Callable[..., WorkerPool]]:
    """Run a WorkerPool in a thread of this process; stopped (gracefully) at teardown."""
    running: list[tuple[WorkerPool, threading.Thread]] = []

    def start(**kwargs: Any) -> WorkerPool:
        kwargs.setdefault("concurrency", 2)
        kwargs.setdefault("poll_interval_seconds", 0.05)
        kwargs.setdefault("grace_seconds", 5)
        pool = WorkerPool(**kwargs)
        thread = threading.Thread(target=pool.run, name="test-worker-pool", daemon=True)
        thread.start()
        running.append((pool, thread))
        return pool

    yield start
    for pool, thread in running:
        pool.stop()
        thread.join(timeout=15)
        assert not thread.is_alive(), "worker pool did not stop"


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


@pytest.fixture(autouse=True, scope="session")
def _test_handlers() -> None:
    """The handlers of tests/handlers.py, registered in this process as in worker subprocesses."""
    from tasks.handlers import registry
    from tests import handlers

    for name in ("count", "flaky", "block"):
        registry.register(name, getattr(handlers, name))


@pytest.fixture
def fast_retries(settings: Any) -> None:
    settings.TASKFLOW = {**settings.TASKFLOW, "RETRY_BACKOFF_BASE_SECONDS": 0.01, "RETRY_BACKOFF_MAX_SECONDS": 0.05}
