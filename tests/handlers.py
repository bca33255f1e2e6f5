"""Handlers that tests register, in-process and in worker subprocesses (TASKFLOW_HANDLERS)."""

import time
from typing import Any

from django.db import connection, transaction

SIDE_EFFECTS_TABLE_SQL = "CREATE TABLE IF NOT EXISTS test_side_effects (key varchar(100) PRIMARY KEY, n integer)"


def _bump(key: str) -> int:
    """Count a side effect in its own table row, committed at once: proof a handler ran.

    The table is created once per test database (conftest's django_db_setup), not here:
    concurrent CREATE TABLE IF NOT EXISTS can fail on PostgreSQL.
    """
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO test_side_effects (key, n) VALUES (%s, 1)"
            " ON CONFLICT (key) DO UPDATE SET n = test_side_effects.n + 1",
            [key],
        )
        cursor.execute("SELECT n FROM test_side_effects WHERE key = %s", [key])
        return int(cursor.fetchone()[0])


def side_effects(key_prefix: str = "") -> dict[str, int]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT key, n FROM test_side_effects WHERE key LIKE %s", [key_prefix + "%"])
        return {key: n for key, n in cursor.fetchall()}


def count(*, key: str, **_: Any) -> int:
    return _bump(key)


def flaky(*, key: str, failures: int) -> dict[str, int]:
    """Fail the first `failures` runs for `key`, then succeed."""
    runs = _bump(key)
    if runs <= failures:
        raise RuntimeError(f"flaky failure {runs} of {failures}")
    return {"runs": runs}


def block(*, key: str, seconds: float) -> int:
    """Record the start, then sleep: a task that is mid-work when a test kills its worker."""
    runs = _bump(key)
    time.sleep(seconds)
    return runs
