"""Tasks as rows, and the worker processes that run them."""

import datetime
import uuid

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

TYPE_MAX_LENGTH = 50  # characters, as the seed's VARCHAR(50)
QUEUE_MAX_LENGTH = 50  # characters
DEFAULT_QUEUE = "default"
PRIORITY_MIN, PRIORITY_MAX = -100, 100


class TaskStatus(models.TextChoices):
    # Queued, or waiting for run_after (a retry's backoff included).
    PENDING = "pending", "Pending"
    # Claimed by a worker, which holds its lease.
    RUNNING = "running", "Running"
    # The handler returned; result holds what it returned.
    DONE = "done", "Done"
    # Out of attempts, or a permanent error; error holds the last one.
    FAILED = "failed", "Failed"
    # Cancelled before it ran.
    CANCELLED = "cancelled", "Cancelled"


FINISHED_STATUSES = (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED)


class TaskQuerySet(models.QuerySet["Task"]):
    def ready(self) -> "TaskQuerySet":
        return self.filter(status=TaskStatus.PENDING, run_after__lte=timezone.now())

    def lease_expired(self) -> "TaskQuerySet":
        return self.filter(status=TaskStatus.RUNNING, lease_expires_at__lt=timezone.now())

    def newest_first(self) -> "TaskQuerySet":
        return self.order_by("-created_at", "-id")


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    type = models.CharField(max_length=TYPE_MAX_LENGTH)
    payload = models.JSONField(default=dict)
    status = models.CharField(max_length=20, choices=TaskStatus.choices, default=TaskStatus.PENDING)
    queue = models.CharField(max_length=QUEUE_MAX_LENGTH, default=DEFAULT_QUEUE)
    priority = models.SmallIntegerField(default=0, help_text="-100..100, higher runs first")
    attempts = models.PositiveIntegerField(default=0, help_text="Attempts started so far")
    max_attempts = models.PositiveIntegerField(default=3)
    run_after = models.DateTimeField(default=timezone.now, help_text="Not claimed before this time")
    # NULL, not "", when absent: the unique constraint applies only to given keys.
    idempotency_key = models.CharField(max_length=255, null=True, blank=True, editable=False)  # noqa: DJ001
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True, help_text="When the last attempt was claimed")
    finished_at = models.DateTimeField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    error = models.TextField(blank=True, default="", help_text="The last attempt's error")
    # One entry per failed attempt: {"attempt", "at", "type", "message", "traceback"}.
    errors = models.JSONField(default=list, blank=True)
    worker_id = models.CharField(max_length=64, null=True, blank=True, help_text="Lease holder")  # noqa: DJ001
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)

    objects = TaskQuerySet.as_manager()

    class Meta:
        db_table = "tasks_task"
        ordering = ["-created_at", "-id"]
        indexes = [
            # claim_ready_tasks: WHERE status='pending' AND run_after <= now
            # ORDER BY priority DESC, run_after, created_at. Only ready rows are indexed,
            # so the index stays small however many finished tasks the table holds.
            models.Index(
                F("priority").desc(),
                "run_after",
                "created_at",
                name="task_ready_idx",
                condition=Q(status="pending"),
            ),
            # GET /tasks and the admin list: ORDER BY created_at DESC, id DESC, with the
            # cursor predicate (created_at, id) < (...).
            models.Index(F("created_at").desc(), F("id").desc(), name="task_newest_idx"),
            # Filtered listings: WHERE status=... / type=... / queue=... ORDER BY created_at DESC.
            models.Index("status", F("created_at").desc(), name="task_status_created_idx"),
            models.Index("type", F("created_at").desc(), name="task_type_created_idx"),
            models.Index("queue", F("created_at").desc(), name="task_queue_created_idx"),
            # recover_expired_leases: WHERE status='running' AND lease_expires_at < now,
            # and extend_leases: WHERE status='running' AND worker_id = ...
            models.Index("lease_expires_at", name="task_lease_idx", condition=Q(status="running")),
            models.Index("worker_id", name="task_worker_idx", condition=Q(status="running")),
            # prunetasks: WHERE status IN (finished) AND finished_at < cutoff.
            models.Index(
                "finished_at",
                name="task_finished_idx",
                condition=Q(finished_at__isnull=False),
            ),
        ]
        constraints = [
            models.CheckConstraint(
                condition=Q(priority__gte=PRIORITY_MIN, priority__lte=PRIORITY_MAX),
                name="task_priority_range",
            ),
            models.CheckConstraint(condition=Q(max_attempts__gte=1), name="task_max_attempts_positive"),
            models.CheckConstraint(condition=Q(status__in=TaskStatus.values), name="task_status_valid"),
            models.UniqueConstraint(
                fields=["idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="task_idempotency_key_unique",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.id} ({self.status})"

    @property
    def duration(self) -> datetime.timedelta | None:
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None


class WorkerQuerySet(models.QuerySet["Worker"]):
    def alive(self, within: datetime.timedelta) -> "WorkerQuerySet":
        return self.filter(stopped_at__isnull=True, last_heartbeat_at__gte=timezone.now() - within)


class Worker(models.Model):
    """One `manage.py runworkers` process, as it reported itself."""

    id = models.CharField(primary_key=True, max_length=64)
    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, help_text="Empty means every queue")
    concurrency = models.PositiveSmallIntegerField()
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat_at = models.DateTimeField(default=timezone.now)
    stopped_at = models.DateTimeField(null=True, blank=True)
    processed_count = models.PositiveBigIntegerField(default=0)
    failed_count = models.PositiveBigIntegerField(default=0)

    objects = WorkerQuerySet.as_manager()

    class Meta:
        db_table = "tasks_worker"
        ordering = ["-started_at"]
        indexes = [models.Index(F("started_at").desc(), name="worker_started_idx")]

    def __str__(self) -> str:
        return f"{self.hostname}:{self.pid}"
