"""Reads: the task listing behind GET /tasks, with keyset pagination."""

import base64
import datetime
import uuid
from dataclasses import dataclass

from tasks.models import Task, TaskQuerySet


class InvalidCursor(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class TaskFilters:
    status: str | None = None
    type: str | None = None
    queue: str | None = None


def encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat()}|{task.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime.datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, task_id = raw.split("|")
        created_at = datetime.datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("naive timestamp")
        # In UTC now, so a forged offset that overflows (0001-01-01T00:00+05:00) fails here,
        # not in the database adapter.
        return created_at.astimezone(datetime.UTC), uuid.UUID(task_id)
    except (ValueError, OverflowError) as exc:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidCursor("cursor is not one this API gave out") from exc


def task_list(*, filters: TaskFilters, limit: int, cursor: str | None = None) -> tuple[list[Task], str | None]:
    """Newest first; returns one page and the cursor of the next (None on the last page)."""
    tasks: TaskQuerySet = Task.objects.newest_first()
    if filters.status:
        tasks = tasks.filter(status=filters.status)
    if filters.type:
        tasks = tasks.filter(type=filters.type)
    if filters.queue:
        tasks = tasks.filter(queue=filters.queue)
    if cursor:
        created_at, task_id = decode_cursor(cursor)
        tasks = tasks.filter(created_at__lte=created_at).exclude(created_at=created_at, id__gte=task_id)
    page = list(tasks[: limit + 1])
    if len(page) > limit:
        return page[:limit], encode_cursor(page[limit - 1])
    return page, None
