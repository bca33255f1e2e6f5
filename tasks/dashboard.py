"""Reads for the operator's console (tasks/admin.py): bounded counts, filter choices, the dashboard.

The task table may hold millions of rows, so nothing here reads the whole of it. Counts
stop at BOUNDED_COUNT_LIMIT rows and fall back to PostgreSQL's planner estimate beyond
it: an operator needs "3 failed" exactly, but "about 1.2 million done" is as good as the
exact figure and costs nothing. Every query names the index that serves it (models.py).
"""

import datetime
import enum
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import Count, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce, Substr, TruncMinute
from django.utils import timezone

from tasks.handlers import registry
from tasks.models import DEFAULT_QUEUE, Task, TaskStatus, Worker

BOUNDED_COUNT_LIMIT = 10_000  # rows counted exactly; past this a count is an estimate
RECENT_TASKS_FOR_CHOICES = 1_000  # newest tasks whose types and queues become filter choices
RECENT_WORKERS_FOR_CHOICES = 100  # newest worker registrations whose queues become choices
FAILURE_SAMPLE = 1_000  # newest failed tasks grouped into "failures at a glance"
LATEST_FAILURES = 8  # failed tasks listed one by one on the dashboard
THROUGHPUT_MINUTES = 60  # the throughput chart's window, one bar per minute
LOST_WORKERS_WITHIN = datetime.timedelta(hours=24)  # unresponsive workers older than this are history


# Counting ---------------------------------------------------------------------------


class CountPrecision(enum.StrEnum):
    # Every row was counted.
    EXACT = "exact"
    # PostgreSQL's planner estimate: table statistics, close but not exact.
    ESTIMATE = "estimate"
    # Counting stopped at the limit and no estimate was available (SQLite): `value` is limit + 1.
    AT_LEAST = "at_least"


@dataclass(frozen=True, kw_only=True)
class ApproximateCount:
    """A row count that is exact up to a limit, and an estimate or a lower bound past it."""

    value: int
    precision: CountPrecision = CountPrecision.EXACT

    @property
    def exact(self) -> bool:
        return self.precision == CountPrecision.EXACT

    def __str__(self) -> str:
        if self.precision == CountPrecision.ESTIMATE:
            return f"≈{self.value:,}"
        if self.precision == CountPrecision.AT_LEAST:
            return f"{self.value - 1:,}+"
        return f"{self.value:,}"


def estimate_rows(queryset: QuerySet[Any]) -> int | None:
    """PostgreSQL's planner estimate of the rows `queryset` returns (None on other databases)."""
    if connection.vendor != "postgresql":
        return None
    plan = json.loads(queryset.order_by().explain(format="json"))
    return int(plan[0]["Plan"]["Plan Rows"])


def count_tasks(queryset: QuerySet[Any], *, limit: int | None = None) -> ApproximateCount:
    """Count up to `limit` rows exactly; past it, the planner's estimate (PostgreSQL) or `limit + 1`.

    The whole table is never counted: unfiltered, PostgreSQL's estimate (table statistics
    scaled to the table's current size) is asked first, and the rows are counted only
    when it says there are few. A filtered count reads at most `limit + 1` index entries.
    """
    limit = BOUNDED_COUNT_LIMIT if limit is None else limit
    estimate: int | None = None
    if not queryset.query.where:
        estimate = estimate_rows(queryset)
        if estimate is not None and estimate > limit:
            return ApproximateCount(value=estimate, precision=CountPrecision.ESTIMATE)
    counted = queryset.order_by().values("pk")[: limit + 1].count()
    if counted <= limit:
        return ApproximateCount(value=counted)
    if estimate is None:
        estimate = estimate_rows(queryset)
    if estimate is None:
        return ApproximateCount(value=counted, precision=CountPrecision.AT_LEAST)
    return ApproximateCount(value=max(counted, estimate), precision=CountPrecision.ESTIMATE)


# Filter choices ---------------------------------------------------------------------


def task_type_choices(*, include: Iterable[str] = ()) -> list[str]:
    """Registered handlers plus the types of the newest tasks: no DISTINCT over the whole table."""
    # task_newest_idx serves ORDER BY created_at DESC LIMIT n.
    recent = Task.objects.order_by("-created_at").values_list("type", flat=True)[:RECENT_TASKS_FOR_CHOICES]
    return sorted({*registry.names(), *recent, *(t for t in include if t)})


def task_queue_choices(*, include: Iterable[str] = ()) -> list[str]:
    """The default queue, the queues workers listen on and the queues of the newest tasks."""
    recent = Task.objects.order_by("-created_at").values_list("queue", flat=True)[:RECENT_TASKS_FOR_CHOICES]
    # worker_started_idx serves ORDER BY started_at DESC LIMIT n.
    listened: set[str] = set()
    for queues in Worker.objects.order_by("-started_at").values_list("queues", flat=True)[:RECENT_WORKERS_FOR_CHOICES]:
        listened.update(q for q in queues if isinstance(q, str))
    return sorted({DEFAULT_QUEUE, *listened, *recent, *(q for q in include if q)})


# Workers ----------------------------------------------------------------------------


class WorkerState(enum.StrEnum):
    # Registered, not stopped, and heard from within two lease periods.
    ALIVE = "alive"
    # Stopped cleanly (SIGTERM/SIGINT): it handed back its unfinished tasks.
    STOPPED = "stopped"
    # Never said it stopped and has gone quiet: killed, host lost, or stuck. Its running
    # tasks go back to pending when their leases expire.
    UNRESPONSIVE = "unresponsive"


def alive_window() -> datetime.timedelta:
    """How recent a heartbeat must be for a worker to count as alive.

    A worker beats every lease/3 seconds; two lease periods allow several missed beats
    (a busy database, a GC pause) before an operator is told it looks dead.
    """
    return datetime.timedelta(seconds=2 * float(settings.TASKFLOW["LEASE_SECONDS"]))


def worker_state(worker: Worker, *, now: datetime.datetime) -> WorkerState:
    if worker.stopped_at is not None:
        return WorkerState.STOPPED
    if worker.last_heartbeat_at >= now - alive_window():
        return WorkerState.ALIVE
    return WorkerState.UNRESPONSIVE


def worker_state_condition(state: WorkerState, *, now: datetime.datetime) -> Q:
    if state == WorkerState.STOPPED:
        return Q(stopped_at__isnull=False)
    if state == WorkerState.ALIVE:
        return Q(stopped_at__isnull=True, last_heartbeat_at__gte=now - alive_window())
    return Q(stopped_at__isnull=True, last_heartbeat_at__lt=now - alive_window())


def workers_in_state(state: WorkerState, *, now: datetime.datetime) -> QuerySet[Worker]:
    return Worker.objects.filter(worker_state_condition(state, now=now))


def with_running_counts(queryset: QuerySet[Worker]) -> QuerySet[Worker]:
    """Annotate `running_tasks`: one correlated count per worker row, served by task_worker_idx."""
    running = (
        Task.objects.filter(status=TaskStatus.RUNNING, worker_id=OuterRef("id"))
        .order_by()
        .values("worker_id")
        .annotate(n=Count("id"))
        .values("n")
    )
    return queryset.annotate(running_tasks=Coalesce(Subquery(running), 0))


# The dashboard ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TypeRow:
    type: str
    pending: int
    running: int
    failed: int
    done_last_hour: int
    failed_last_hour: int


@dataclass(frozen=True, kw_only=True)
class FailureGroup:
    type: str
    error: str
    count: int


@dataclass(frozen=True, kw_only=True)
class ThroughputMinute:
    minute: datetime.datetime
    done: int
    failed: int


@dataclass(frozen=True, kw_only=True)
class ChartBar:
    x: float
    width: float
    done_y: float
    done_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True, kw_only=True)
class ChartTick:
    position: float
    label: str


@dataclass(frozen=True, kw_only=True)
class ThroughputChart:
    """Geometry for the inline SVG bar chart (viewBox WIDTH x HEIGHT), computed here to keep the template dumb."""

    WIDTH = 720
    HEIGHT = 180
    LEFT = 44  # room for the y-axis labels
    TOP = 10
    BOTTOM = 156  # baseline; the x-axis labels sit below it

    bars: list[ChartBar]
    y_ticks: list[ChartTick]
    x_ticks: list[ChartTick]
    peak: int


@dataclass(frozen=True, kw_only=True)
class Dashboard:
    now: datetime.datetime
    status_counts: dict[str, ApproximateCount]
    ready: ApproximateCount
    expired_leases: ApproximateCount
    oldest_pending: Task | None
    types: list[TypeRow]
    # Per-type backlog counts are exact unless a status holds more than BOUNDED_COUNT_LIMIT rows.
    types_sampled: bool
    throughput: list[ThroughputMinute]
    chart: ThroughputChart
    done_last_hour: int
    failed_last_hour: int
    failure_groups: list[FailureGroup]
    latest_failures: list[Task]
    workers_alive: list[Worker]
    workers_lost: int

    @property
    def oldest_pending_age(self) -> datetime.timedelta | None:
        if self.oldest_pending is None:
            return None
        return self.now - self.oldest_pending.created_at


# Statuses whose rows are the backlog an operator acts on; their per-type breakdown is
# read from the newest rows of each (task_status_created_idx), at most BOUNDED_COUNT_LIMIT.
BACKLOG_STATUSES = (TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.FAILED)


def _backlog_by_type(status: TaskStatus) -> tuple[Counter[str], ApproximateCount]:
    types = list(
        Task.objects.filter(status=status)
        .order_by("-created_at")
        .values_list("type", flat=True)[: BOUNDED_COUNT_LIMIT + 1]
    )
    if len(types) <= BOUNDED_COUNT_LIMIT:
        return Counter(types), ApproximateCount(value=len(types))
    return Counter(types[:BOUNDED_COUNT_LIMIT]), count_tasks(Task.objects.filter(status=status))


@dataclass(frozen=True, kw_only=True)
class FinishedLastHour:
    minutes: list[ThroughputMinute]  # oldest first, THROUGHPUT_MINUTES of them
    done_by_type: Counter[str]
    failed_by_type: Counter[str]


def finished_last_hour(*, now: datetime.datetime) -> FinishedLastHour:
    """Tasks finished (done or failed) in each of the last THROUGHPUT_MINUTES minutes, and per type.

    The one query that reads every row of its window: an hour of throughput is the figure
    itself. task_finished_idx serves finished_at >= start.
    """
    this_minute = now.replace(second=0, microsecond=0)
    first = this_minute - datetime.timedelta(minutes=THROUGHPUT_MINUTES - 1)
    rows = (
        Task.objects.filter(finished_at__gte=first, status__in=[TaskStatus.DONE, TaskStatus.FAILED])
        .annotate(minute=TruncMinute("finished_at"))
        .order_by()
        .values_list("minute", "status", "type")
        .annotate(n=Count("id"))
    )
    done: Counter[datetime.datetime] = Counter()
    failed: Counter[datetime.datetime] = Counter()
    done_by_type: Counter[str] = Counter()
    failed_by_type: Counter[str] = Counter()
    for minute, status, type_, n in rows:
        if status == TaskStatus.DONE:
            done[minute] += n
            done_by_type[type_] += n
        else:
            failed[minute] += n
            failed_by_type[type_] += n
    minutes = [first + datetime.timedelta(minutes=i) for i in range(THROUGHPUT_MINUTES)]
    return FinishedLastHour(
        minutes=[ThroughputMinute(minute=m, done=done[m], failed=failed[m]) for m in minutes],
        done_by_type=done_by_type,
        failed_by_type=failed_by_type,
    )


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 x 10^n at or above `value`: a y-axis maximum that reads well."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if factor * step >= value:
                return factor * step
        step *= 10


def throughput_chart(minutes: Sequence[ThroughputMinute]) -> ThroughputChart:
    chart_cls = ThroughputChart
    plot_width = chart_cls.WIDTH - chart_cls.LEFT
    plot_height = chart_cls.BOTTOM - chart_cls.TOP
    peak = max((m.done + m.failed for m in minutes), default=0)
    top = _nice_ceiling(peak)
    slot = plot_width / max(len(minutes), 1)
    bars = []
    for index, m in enumerate(minutes):
        done_height = plot_height * m.done / top
        failed_height = plot_height * m.failed / top
        done_y = chart_cls.BOTTOM - done_height
        bars.append(
            ChartBar(
                x=round(chart_cls.LEFT + index * slot + 1, 2),
                width=round(max(slot - 2, 1), 2),
                done_y=round(done_y, 2),
                done_height=round(done_height, 2),
                failed_y=round(done_y - failed_height, 2),
                failed_height=round(failed_height, 2),
                title=f"{m.minute:%H:%M} UTC: {m.done:,} done, {m.failed:,} failed",
            )
        )
    # Gridlines at zero, the top and, when it is a whole number, halfway.
    values = [0, top // 2, top] if top % 2 == 0 else [0, top]
    y_ticks = [
        ChartTick(position=round(chart_cls.BOTTOM - plot_height * value / top, 2), label=f"{value:,}")
        for value in values
    ]
    x_ticks = [
        ChartTick(position=round(chart_cls.LEFT + index * slot + slot / 2, 2), label=f"{m.minute:%H:%M}")
        for index, m in enumerate(minutes)
        if m.minute.minute % 10 == 0
    ]
    return ThroughputChart(bars=bars, y_ticks=y_ticks, x_ticks=x_ticks, peak=peak)


def failure_groups(*, limit: int = 8) -> list[FailureGroup]:
    """The commonest (type, error) pairs among the newest FAILURE_SAMPLE failed tasks."""
    rows = (
        Task.objects.filter(status=TaskStatus.FAILED)
        .order_by("-created_at")
        .annotate(error_head=Substr("error", 1, 200))
        .values_list("type", "error_head")[:FAILURE_SAMPLE]
    )
    groups = Counter((type_, (error or "").splitlines()[0] if error else "") for type_, error in rows)
    return [FailureGroup(type=t, error=e, count=n) for (t, e), n in groups.most_common(limit)]


def dashboard_snapshot(*, now: datetime.datetime | None = None) -> Dashboard:
    """Everything the dashboard shows, in a dozen queries that each read a bounded number of rows."""
    now = now or timezone.now()
    status_counts: dict[str, ApproximateCount] = {}
    backlog: dict[str, Counter[str]] = {}
    sampled = False
    for status in BACKLOG_STATUSES:
        by_type, total = _backlog_by_type(status)
        backlog[status] = by_type
        status_counts[status] = total
        sampled = sampled or not total.exact
    for status in (TaskStatus.DONE, TaskStatus.CANCELLED):
        status_counts[status] = count_tasks(Task.objects.filter(status=status))
    status_counts = {s: status_counts[s] for s in TaskStatus.values}

    finished = finished_last_hour(now=now)
    throughput, done_by_type, failed_by_type = finished.minutes, finished.done_by_type, finished.failed_by_type
    type_names = sorted(
        {*registry.names(), *done_by_type, *failed_by_type, *(t for counts in backlog.values() for t in counts)}
    )
    types = [
        TypeRow(
            type=name,
            pending=backlog[TaskStatus.PENDING][name],
            running=backlog[TaskStatus.RUNNING][name],
            failed=backlog[TaskStatus.FAILED][name],
            done_last_hour=done_by_type[name],
            failed_last_hour=failed_by_type[name],
        )
        for name in type_names
    ]

    workers_alive = list(with_running_counts(workers_in_state(WorkerState.ALIVE, now=now)).order_by("-started_at"))
    workers_lost = (
        workers_in_state(WorkerState.UNRESPONSIVE, now=now)
        .filter(last_heartbeat_at__gte=now - LOST_WORKERS_WITHIN)
        .count()
    )
    return Dashboard(
        now=now,
        status_counts=status_counts,
        # task_ready_idx (partial, pending rows) serves both.
        ready=count_tasks(Task.objects.filter(status=TaskStatus.PENDING, run_after__lte=now)),
        # task_lease_idx (partial, running rows).
        expired_leases=count_tasks(Task.objects.filter(status=TaskStatus.RUNNING, lease_expires_at__lt=now)),
        # task_status_created_idx, read backwards.
        oldest_pending=Task.objects.filter(status=TaskStatus.PENDING)
        .order_by("created_at")
        .defer("payload", "result", "errors")
        .first(),
        types=types,
        types_sampled=sampled,
        throughput=throughput,
        chart=throughput_chart(throughput),
        done_last_hour=sum(m.done for m in throughput),
        failed_last_hour=sum(m.failed for m in throughput),
        failure_groups=failure_groups(),
        latest_failures=list(
            Task.objects.filter(status=TaskStatus.FAILED)
            .order_by("-created_at", "-id")
            .defer("payload", "result", "errors")[:LATEST_FAILURES]
        ),
        workers_alive=workers_alive,
        workers_lost=workers_lost,
    )
