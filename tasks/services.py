"""Writes: every change of a task's state that is not the worker's own claim/complete."""

import datetime
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from tasks.handlers import registry
from tasks.models import DEFAULT_QUEUE, Task, TaskStatus
from tasks.queue import notify_ready


class TaskNotFound(Exception):
    pass


class TransitionNotAllowed(Exception):
    def __init__(self, task: Task, message: str) -> None:
        super().__init__(message)
        self.task = task


@dataclass(frozen=True, kw_only=True)
class TaskSpec:
    """A task to enqueue, already validated."""

    type: str
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = DEFAULT_QUEUE
    priority: int = 0
    run_after: datetime.datetime | None = None
    max_attempts: int | None = None
    idempotency_key: str | None = None


def default_max_attempts(task_type: str) -> int:
    handler = registry.get(task_type)
    if handler is not None and handler.max_attempts is not None:
        return handler.max_attempts
    return int(settings.TASKFLOW["DEFAULT_MAX_ATTEMPTS"])


def task_enqueue_many(*, specs: Sequence[TaskSpec]) -> list[tuple[Task, bool]]:
    """Insert tasks in one statement; returns (task, created) in the order of `specs`.

    A spec whose idempotency_key is already stored (or repeats an earlier one in the same
    batch) gives back the stored task with created=False instead of a new one.
    """
    now = timezone.now()
    keys = [s.idempotency_key for s in specs if s.idempotency_key]
    by_key = {t.idempotency_key: t for t in Task.objects.filter(idempotency_key__in=keys)} if keys else {}
    results: list[tuple[Task, bool]] = []
    new: list[Task] = []
    for index, spec in enumerate(specs):
        if spec.idempotency_key in by_key:
            results.append((by_key[spec.idempotency_key], False))
            continue
        # A microsecond apart: the claim's created_at tie-break keeps a batch in its order.
        created_at = now + datetime.timedelta(microseconds=index)
        task = Task(
            type=spec.type,
            payload=spec.payload,
            queue=spec.queue,
            priority=spec.priority,
            run_after=spec.run_after or now,
            max_attempts=spec.max_attempts or default_max_attempts(spec.type),
            idempotency_key=spec.idempotency_key,
            created_at=created_at,
            updated_at=created_at,
        )
        new.append(task)
        results.append((task, True))
        if spec.idempotency_key:
            by_key[spec.idempotency_key] = task
    if not new:
        return results
    if not keys and len(new) == 1:
        # One INSERT in autocommit: the enqueue that an idle worker waits on takes the fewest
        # round trips (bulk_create would add BEGIN and COMMIT).
        new[0].save(force_insert=True)
    elif not keys:
        Task.objects.bulk_create(new)
    else:
        # A concurrent request may have stored one of these keys since the lookup above:
        # its row wins, and is read back in place of ours.
        Task.objects.bulk_create(new, ignore_conflicts=True)
        stored = {t.idempotency_key: t for t in Task.objects.filter(idempotency_key__in=keys)}
        results = [
            (stored[task.idempotency_key], False)
            if task.idempotency_key and stored[task.idempotency_key].id != task.id
            else (task, created)
            for task, created in results
        ]
    # No NOTIFY here: on PostgreSQL the insert trigger (migration 0002) sends it with the
    # commit, so a woken worker finds the rows.
    return results


def task_enqueue(
    *,
    type: str,
    payload: dict[str, Any] | None = None,
    queue: str = DEFAULT_QUEUE,
    priority: int = 0,
    run_after: datetime.datetime | None = None,
    max_attempts: int | None = None,
    idempotency_key: str | None = None,
) -> Task:
    """Enqueue one task (for Python callers; the API validates and calls task_enqueue_many)."""
    spec = TaskSpec(
        type=type,
        payload=payload or {},
        queue=queue,
        priority=priority,
        run_after=run_after,
        max_attempts=max_attempts,
        idempotency_key=idempotency_key,
    )
    [(task, _created)] = task_enqueue_many(specs=[spec])
    return task


def _transition(
    task_id: uuid.UUID | str,
    allowed: Sequence[TaskStatus],
    updates: dict[str, Any],
    verb: str,
) -> Task:
    """Apply `updates` if the task is in one of `allowed`, in one conditional UPDATE."""
    changed = Task.objects.filter(id=task_id, status__in=allowed).update(**updates, updated_at=timezone.now())
    try:
        task = Task.objects.get(id=task_id)
    except Task.DoesNotExist:
        raise TaskNotFound(str(task_id)) from None
    if not changed:
        allowed_names = " or ".join(allowed)
        raise TransitionNotAllowed(task, f"cannot {verb} a {task.status} task (only {allowed_names})")
    return task


@transaction.atomic
def task_retry(*, task_id: uuid.UUID | str) -> Task:
    """failed or cancelled -> pending, attempts reset; earlier errors stay in `errors`."""
    task = _transition(
        task_id,
        [TaskStatus.FAILED, TaskStatus.CANCELLED],
        {
            "status": TaskStatus.PENDING,
            "attempts": 0,
            "run_after": timezone.now(),
            "started_at": None,
            "finished_at": None,
            "result": None,
            "error": "",
            "cancel_requested": False,
            "worker_id": None,
            "lease_expires_at": None,
        },
        "retry",
    )
    notify_ready([task.queue])
    return task


@transaction.atomic
def task_cancel(*, task_id: uuid.UUID | str) -> Task:
    """pending -> cancelled; running -> cancel requested (the handler may observe it)."""
    try:
        return _transition(
            task_id,
            [TaskStatus.PENDING],
            {
                "status": TaskStatus.CANCELLED,
                "finished_at": timezone.now(),
                "cancel_requested": True,
            },
            "cancel",
        )
    except TransitionNotAllowed as exc:
        if exc.task.status != TaskStatus.RUNNING:
            message = f"cannot cancel a {exc.task.status} task (only pending or running)"
            raise TransitionNotAllowed(exc.task, message) from None
    return _transition(task_id, [TaskStatus.RUNNING], {"cancel_requested": True}, "cancel")


@transaction.atomic
def task_run_now(*, task_id: uuid.UUID | str) -> Task:
    """A pending task waiting for run_after (or a retry's backoff) becomes ready now."""
    task = _transition(task_id, [TaskStatus.PENDING], {"run_after": timezone.now()}, "run now")
    notify_ready([task.queue])
    return task
