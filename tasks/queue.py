"""The database as the queue: the statements a worker runs to claim, finish and hand back tasks.

Every function runs on the calling thread's Django connection. Timestamps come from the
worker's clock (one code path for PostgreSQL and SQLite); hosts are expected to run NTP,
and leases are tens of seconds, so skew of a second does not matter.
"""

import datetime
import json
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import F
from django.utils import timezone

from tasks.models import Task, TaskStatus

NOTIFY_CHANNEL = "taskflow_tasks"


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    """A task this worker holds the lease of; `attempt` is the fencing token."""

    id: uuid.UUID
    type: str
    payload: dict[str, Any]
    attempt: int
    max_attempts: int
    queue: str


def _db_id(task_id: uuid.UUID) -> Any:
    return Task._meta.pk.get_db_prep_value(task_id, connection)


def _db_time(value: datetime.datetime) -> Any:
    return connection.ops.adapt_datetimefield_value(value)


def _as_uuid(value: Any) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(value)


def _as_json(value: Any) -> Any:
    # Django loads jsonb as text on purpose (JSONField decodes it); so does SQLite. The
    # standard library keeps integers of any size exact, as the payload was submitted.
    return json.loads(value) if isinstance(value, str | bytes) else value


# The claim, served by task_ready_idx (models.py). On PostgreSQL, SKIP LOCKED lets any
# number of workers claim at once without waiting on each other or taking the same row;
# SQLite takes the database's write lock for the statement, which serialises claims instead.
# One statement in autocommit: no BEGIN/COMMIT round trips on the hottest path.
_READY_IDS = """
    SELECT id FROM tasks_task
    WHERE status = 'pending' AND run_after <= %s {queue_filter}
    ORDER BY priority DESC, run_after, created_at
    LIMIT %s {lock}
"""
_CLAIM_UPDATE = """
UPDATE tasks_task
SET status = 'running', attempts = attempts + 1, worker_id = %s,
    lease_expires_at = %s, started_at = %s, updated_at = %s, finished_at = NULL
WHERE {ids_match}
RETURNING id, type, payload, attempts, max_attempts, queue, priority, run_after, created_at
"""
# = ANY(ARRAY(...)) runs the locking subquery once and probes the primary key; PostgreSQL
# plans IN (...) as a join that scans more. RETURNING gives rows in no set order: the outer
# SELECT sorts them, so threads start the highest priority first.
_CLAIM_SQL_POSTGRES = (
    "WITH claimed AS ("
    + _CLAIM_UPDATE.replace(
        "{ids_match}", "id = ANY(ARRAY(" + _READY_IDS.replace("{lock}", "FOR UPDATE SKIP LOCKED") + "))"
    )
    + ")\nSELECT id, type, payload, attempts, max_attempts, queue FROM claimed\n"
    "ORDER BY priority DESC, run_after, created_at"
)
_CLAIM_SQL_SQLITE = _CLAIM_UPDATE.replace("{ids_match}", "id IN (" + _READY_IDS.replace("{lock}", "") + ")")


def claim_ready_tasks(
    *, worker_id: str, limit: int, queues: Sequence[str] = (), lease_seconds: float
) -> list[ClaimedTask]:
    """Claim up to `limit` ready tasks in one statement, highest priority first."""
    now = timezone.now()
    queue_filter = f"AND queue IN ({', '.join(['%s'] * len(queues))})" if queues else ""
    lease = _db_time(now + datetime.timedelta(seconds=lease_seconds))
    params = [worker_id, lease, _db_time(now), _db_time(now), _db_time(now), *queues, limit]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(_CLAIM_SQL_POSTGRES.replace("{queue_filter}", queue_filter), params)
            rows = cursor.fetchall()
        else:
            # SQLite has no RETURNING inside a CTE: sort here on the extra columns.
            cursor.execute(_CLAIM_SQL_SQLITE.replace("{queue_filter}", queue_filter), params)
            rows = sorted(cursor.fetchall(), key=lambda row: (-row[6], row[7], row[8]))
    return [
        ClaimedTask(
            id=_as_uuid(row[0]),
            type=row[1],
            payload=_as_json(row[2]),
            attempt=row[3],
            max_attempts=row[4],
            queue=row[5],
        )
        for row in rows
    ]


_COMPLETE_SQL_POSTGRES = """
UPDATE tasks_task AS t
SET status = 'done', result = d.result::jsonb, finished_at = %s, updated_at = %s, lease_expires_at = NULL
FROM unnest(%s::uuid[], %s::integer[], %s::text[]) AS d(id, attempt, result)
WHERE t.id = d.id AND t.attempts = d.attempt AND t.worker_id = %s AND t.status = 'running'
RETURNING t.id
"""

_COMPLETE_SQL_SQLITE = """
UPDATE tasks_task
SET status = 'done', result = %s, finished_at = %s, updated_at = %s, lease_expires_at = NULL
WHERE id = %s AND attempts = %s AND worker_id = %s AND status = 'running'
"""


@dataclass(frozen=True, slots=True)
class Success:
    task: ClaimedTask
    result_json: str | None  # already encoded, so a bad result fails in the handler thread
    duration_ms: float


def complete_tasks(*, worker_id: str, successes: Sequence[Success]) -> set[uuid.UUID]:
    """Record `done` for a batch in one transaction; returns the ids this worker still held.

    Fenced: a row whose lease was taken over (status, holder or attempt changed) is left alone.
    """
    if not successes:
        return set()
    now = _db_time(timezone.now())
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # one statement: atomic without BEGIN/COMMIT
            cursor.execute(
                _COMPLETE_SQL_POSTGRES,
                [
                    now,
                    now,
                    [s.task.id for s in successes],
                    [s.task.attempt for s in successes],
                    [s.result_json for s in successes],
                    worker_id,
                ],
            )
            return {_as_uuid(row[0]) for row in cursor.fetchall()}
    completed = set()
    with transaction.atomic(), connection.cursor() as cursor:
        for s in successes:
            cursor.execute(
                _COMPLETE_SQL_SQLITE,
                [s.result_json, now, now, _db_id(s.task.id), s.task.attempt, worker_id],
            )
            if cursor.rowcount:
                completed.add(s.task.id)
    return completed


def retry_delay(attempt: int) -> datetime.timedelta:
    """Exponential backoff with equal jitter: half fixed, half random, capped."""
    config = settings.TASKFLOW
    ceiling = min(
        config["RETRY_BACKOFF_MAX_SECONDS"],
        config["RETRY_BACKOFF_BASE_SECONDS"] * 2 ** (attempt - 1),
    )
    return datetime.timedelta(seconds=ceiling / 2 + random.uniform(0, ceiling / 2))  # noqa: S311 - not crypto


def error_entry(*, attempt: int, exc_type: str, message: str, traceback: str, worker_id: str | None) -> dict[str, Any]:
    return {
        "attempt": attempt,
        "at": timezone.now().isoformat().replace("+00:00", "Z"),
        "type": exc_type,
        "message": _storable_text(message),
        "traceback": _storable_text(traceback),
        "worker_id": worker_id,
    }


def _storable_text(text: str) -> str:
    """PostgreSQL cannot store NUL characters nor lone surrogates: escape them."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def record_failure(*, worker_id: str, task: ClaimedTask, entry: dict[str, Any], permanent: bool) -> Task | None:
    """Record a failed attempt: back to `pending` after a backoff, or `failed` when out of attempts.

    Returns the row as written, or None when the lease was lost (fenced: nothing written).
    """
    with transaction.atomic():
        row = (
            Task.objects.select_for_update()
            .filter(
                id=task.id,
                attempts=task.attempt,
                worker_id=worker_id,
                status=TaskStatus.RUNNING,
            )
            .first()
        )
        if row is None:
            return None
        _apply_failure(row, entry, permanent=permanent)
        return row


def _apply_failure(row: Task, entry: dict[str, Any], *, permanent: bool, retry_now: bool = False) -> None:
    now = timezone.now()
    row.errors = [*row.errors, entry]
    row.error = f"{entry['type']}: {entry['message']}"
    row.lease_expires_at = None
    row.updated_at = now
    if permanent or row.cancel_requested or row.attempts >= row.max_attempts:
        row.status = TaskStatus.FAILED
        row.finished_at = now
    else:
        row.status = TaskStatus.PENDING
        row.run_after = now if retry_now else now + retry_delay(row.attempts)
    row.save(
        update_fields=[
            "errors",
            "error",
            "lease_expires_at",
            "updated_at",
            "status",
            "finished_at",
            "run_after",
        ]
    )


def extend_leases(*, worker_id: str, task_ids: Iterable[uuid.UUID], lease_seconds: float) -> int:
    """Push back the lease of the tasks this worker is still running (the heartbeat)."""
    ids = list(task_ids)
    if not ids:
        return 0
    now = timezone.now()
    return Task.objects.filter(id__in=ids, worker_id=worker_id, status=TaskStatus.RUNNING).update(
        lease_expires_at=now + datetime.timedelta(seconds=lease_seconds), updated_at=now
    )


LEASE_RECOVERY_BATCH = 100  # tasks per transaction


def recover_expired_leases(*, limit: int = LEASE_RECOVERY_BATCH) -> list[Task]:
    """Give tasks whose worker vanished back to `pending` (attempt counted), or `failed` when out of attempts."""
    with transaction.atomic():
        rows = list(
            Task.objects.lease_expired().select_for_update(skip_locked=True).order_by("lease_expires_at")[:limit]
        )
        for row in rows:
            entry = error_entry(
                attempt=row.attempts,
                exc_type="LeaseExpired",
                message=f"worker {row.worker_id} stopped renewing its lease",
                traceback="",
                worker_id=row.worker_id,
            )
            # The attempt was lost, not failed by the handler: try again straight away.
            _apply_failure(row, entry, permanent=False, retry_now=True)
        notify_ready(row.queue for row in rows if row.status == TaskStatus.PENDING)
    return rows


def release_tasks(*, worker_id: str, task_ids: Iterable[uuid.UUID]) -> int:
    """Hand tasks this worker will not finish back to `pending`, the attempt uncounted."""
    ids = list(task_ids)
    if not ids:
        return 0
    now = timezone.now()
    held = Task.objects.filter(id__in=ids, worker_id=worker_id, status=TaskStatus.RUNNING)
    # An operator asked to cancel it meanwhile: honour that rather than hand it to another worker.
    cancelled = held.filter(cancel_requested=True).update(
        status=TaskStatus.CANCELLED, attempts=F("attempts") - 1, lease_expires_at=None, finished_at=now, updated_at=now
    )
    released = held.update(
        status=TaskStatus.PENDING,
        attempts=F("attempts") - 1,
        lease_expires_at=None,
        run_after=now,
        updated_at=now,
    )
    if released:
        # Other workers may be idle: they take these now rather than at their next poll.
        notify_ready(Task.objects.filter(id__in=ids).order_by().values_list("queue", flat=True).distinct())
    return released + cancelled


def notify_ready(queues: Iterable[str]) -> None:
    """Wake idle PostgreSQL workers for tasks made ready by an UPDATE (inserts notify by trigger).

    NOTIFY is transactional: inside a transaction it fires when that commits.
    """
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for queue in set(queues):
            cursor.execute("SELECT pg_notify(%s, %s)", [NOTIFY_CHANNEL, queue])
