"""The operator's console: tasks (list, page, retry / cancel / run now), workers and a dashboard.

The task table may hold millions of rows. Nothing here counts or scans all of them on a
page load: the paginator counts at most BOUNDED_COUNT_LIMIT rows and estimates past it,
filter choices come from the handler registry and the newest rows, the list defers the
large JSON columns, and only index-served orderings are sortable. The reads live in
tasks/dashboard.py; every write goes through tasks/services.py.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.contrib.admin import ActionLocation
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.admin.utils import quote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from tasks import dashboard
from tasks.models import Task, TaskStatus, Worker
from tasks.services import TaskNotFound, TransitionNotAllowed, task_cancel, task_retry, task_run_now

if TYPE_CHECKING:
    TaskModelAdmin = admin.ModelAdmin[Task]
    WorkerModelAdmin = admin.ModelAdmin[Worker]
    TaskPaginatorBase = Paginator[Task]
else:  # not subscriptable at run time
    TaskModelAdmin = WorkerModelAdmin = admin.ModelAdmin
    TaskPaginatorBase = Paginator

admin.site.site_header = "TaskFlow operations"
admin.site.site_title = "TaskFlow"
admin.site.index_title = "Operator's console"
# The task list needs the width more than a second app list does: breadcrumbs and the
# Dashboard / Workers / Tasks links cover the navigation.
admin.site.enable_nav_sidebar = False
# The admin index opens with a link to the dashboard (see tasks/templates/admin/tasks/site_index.html).
admin.site.index_template = "admin/tasks/site_index.html"

ACTION_MAX_TASKS = 1_000  # tasks one action request changes; each is its own transaction
PRETTY_JSON_MAX_CHARS = 200_000  # longer payloads and results are cut on the task page
LIST_ERROR_CHARS = 80  # characters of the last error shown in the task list


# Formatting -------------------------------------------------------------------------


def format_duration(delta: datetime.timedelta) -> str:
    """A short human duration: 350 ms, 12.4 s, 3 min 5 s, 2 h 10 min, 3 d 4 h."""
    seconds = abs(delta.total_seconds())
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def _relative(value: datetime.datetime, now: datetime.datetime) -> str:
    if abs((value - now).total_seconds()) < 1:
        return "now"
    return f"in {format_duration(value - now)}" if value > now else f"{format_duration(now - value)} ago"


def _iso(value: datetime.datetime) -> str:
    return value.astimezone(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def format_timestamp(value: datetime.datetime | None, *, compact: bool = False) -> str:
    """A <time> element: compact (time of day, or date and time) in lists, ISO plus "3 min ago" on pages."""
    if value is None:
        return "-"
    now = timezone.now()
    iso = _iso(value)
    relative = _relative(value, now)
    if not compact:
        return format_html('<time datetime="{}">{}</time> <span class="tf-quiet">({})</span>', iso, iso, relative)
    utc = value.astimezone(datetime.UTC)
    text = f"{utc:%H:%M:%S}" if utc.date() == now.astimezone(datetime.UTC).date() else f"{utc:%b %d, %H:%M}"
    return format_html('<time datetime="{}" title="{} ({})">{}</time>', iso, iso, relative, text)


def status_badge(status: str) -> str:
    return format_html('<span class="tf-badge tf-status-{}">{}</span>', status, status)


def pretty_json(value: Any) -> str:
    if value is None:
        return "-"
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > PRETTY_JSON_MAX_CHARS:
        cut = len(text) - PRETTY_JSON_MAX_CHARS
        return format_html(
            '<pre class="tf-code">{}</pre><p class="tf-quiet">… {} more characters not shown</p>',
            text[:PRETTY_JSON_MAX_CHARS],
            f"{cut:,}",
        )
    return format_html('<pre class="tf-code">{}</pre>', text)


def _changelist_url(model: type[Task] | type[Worker], **params: str) -> str:
    url = reverse(f"admin:tasks_{model._meta.model_name}_changelist")
    return f"{url}?{urlencode(params)}" if params else url


def dashboard_context(board: dashboard.Dashboard) -> dict[str, Any]:
    """What the dashboard template shows, formatted: the template only lays it out."""
    tasks_url, workers_url = _changelist_url(Task), _changelist_url(Worker)
    counts = board.status_counts
    notes: dict[str, str] = {TaskStatus.PENDING: f"{board.ready} ready now"}
    if counts[TaskStatus.RUNNING].value and board.expired_leases.value:
        notes[TaskStatus.RUNNING] = f"{board.expired_leases} lease expired"
    status_tiles = [
        {"status": status, "label": label, "count": counts[status], "note": notes.get(status, "")}
        for status, label in TaskStatus.choices
    ]
    alerts = []
    if not board.workers_alive and board.ready.value:
        alerts.append(
            {
                "level": "error",
                "text": f"{_tasks(board.ready.value)} ready to run and no worker is alive.",
                "url": f"{workers_url}?state=unresponsive",
                "link": "Unresponsive workers",
            }
        )
    if board.expired_leases.value:
        alerts.append(
            {
                "level": "warning",
                "text": (
                    "1 running task holds an expired lease"
                    if board.expired_leases.value == 1
                    else f"{board.expired_leases} running tasks hold expired leases"
                )
                + ": the worker stopped renewing it. A live worker hands such tasks back to pending.",
                "url": _changelist_url(Task, condition="lease_expired"),
                "link": "See them",
            }
        )
    if board.workers_lost:
        alerts.append(
            {
                "level": "warning",
                "text": f"{board.workers_lost} worker{'' if board.workers_lost == 1 else 's'} went silent "
                "in the last 24 h without stopping.",
                "url": f"{workers_url}?state=unresponsive",
                "link": "See them",
            }
        )
    oldest = board.oldest_pending
    hour_ago = board.now - datetime.timedelta(minutes=dashboard.THROUGHPUT_MINUTES)
    workers = [
        {
            "name": str(w),
            "url": reverse("admin:tasks_worker_change", args=[quote(w.id)]),
            "queues": ", ".join(w.queues) if w.queues else "all",
            "concurrency": w.concurrency,
            "running": getattr(w, "running_tasks", 0),
            "heartbeat": format_timestamp(w.last_heartbeat_at, compact=True),
            "processed": f"{w.processed_count:,}",
            "failed": f"{w.failed_count:,}",
        }
        for w in board.workers_alive
    ]
    return {
        "dashboard": board,
        "chart": board.chart,
        "plot_height": board.chart.BOTTOM - board.chart.TOP,
        "now_iso": _iso(board.now),
        "status_tiles": status_tiles,
        "alerts": alerts,
        "oldest_pending_age": format_duration(board.oldest_pending_age) if board.oldest_pending_age else "",
        "oldest_pending_waits": _relative(oldest.run_after, board.now)
        if oldest and oldest.run_after > board.now
        else "",
        "failed_count": counts[TaskStatus.FAILED],
        "failed_last_hour_url": _changelist_url(Task, status__exact="failed", finished_at__gte=_iso(hour_ago)),
        "threads_alive": sum(w.concurrency for w in board.workers_alive),
        "workers": workers,
        "bounded_count_limit": f"{dashboard.BOUNDED_COUNT_LIMIT:,}",
        "tasks_url": tasks_url,
        "workers_url": workers_url,
    }


# Task list: pagination without COUNT(*), filters without DISTINCT ----------------------


class TaskPaginator(TaskPaginatorBase):
    """Counts at most BOUNDED_COUNT_LIMIT rows; past that, pages follow the planner's estimate."""

    @cached_property
    def approximate_count(self) -> dashboard.ApproximateCount:
        return dashboard.count_tasks(self.object_list)  # type: ignore[arg-type]

    @cached_property
    def count(self) -> int:
        return self.approximate_count.value

    def get_elided_page_range(
        self, number: int | float | str = 1, *, on_each_side: int = 3, on_ends: int = 2
    ) -> Iterator[str | int]:
        if self.approximate_count.exact:
            return super().get_elided_page_range(number, on_each_side=on_each_side, on_ends=on_ends)
        # The last pages of an estimate may not exist, and reaching them would OFFSET over
        # the whole table: link the first pages and those around this one, nothing past.
        current = self.validate_number(number)
        shown = sorted(
            {*range(1, min(on_ends, self.num_pages) + 1)}
            | {*range(max(1, current - on_each_side), min(self.num_pages, current + on_each_side) + 1)}
        )
        pages: list[str | int] = []
        for page in shown:
            if pages and isinstance(pages[-1], int) and page > pages[-1] + 1:
                pages.append(str(self.ELLIPSIS))
            pages.append(page)
        if shown[-1] < self.num_pages:
            pages.append(str(self.ELLIPSIS))
        return iter(pages)


class TaskChangeList(ChangeList):
    def get_queryset(self, request: HttpRequest, exclude_parameters: list[str | None] | None = None) -> QuerySet[Any]:
        # The list shows none of these, and a payload or a run of tracebacks can be large.
        return super().get_queryset(request, exclude_parameters).defer("payload", "result", "errors")


class TaskTypeFilter(admin.SimpleListFilter):
    title = "type"
    parameter_name = "type"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(name, name) for name in dashboard.task_type_choices(include=[self.value() or ""])]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # task_type_created_idx serves WHERE type = ... ORDER BY created_at DESC.
        return queryset.filter(type=self.value()) if self.value() else queryset


class TaskQueueFilter(admin.SimpleListFilter):
    title = "queue"
    parameter_name = "queue"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(name, name) for name in dashboard.task_queue_choices(include=[self.value() or ""])]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # task_queue_created_idx serves WHERE queue = ... ORDER BY created_at DESC.
        return queryset.filter(queue=self.value()) if self.value() else queryset


class TaskConditionFilter(admin.SimpleListFilter):
    """Finer states an operator asks about; each starts from one status, so the status index serves it."""

    title = "condition"
    parameter_name = "condition"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [
            ("ready", "Pending, ready to run"),
            ("scheduled", "Pending, run after a future time"),
            ("retrying", "Pending, failed before"),
            ("lease_expired", "Running, lease expired"),
            ("cancel_requested", "Running, cancel requested"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        now = timezone.now()
        conditions = {
            "ready": Q(status=TaskStatus.PENDING, run_after__lte=now),
            "scheduled": Q(status=TaskStatus.PENDING, run_after__gt=now),
            "retrying": Q(status=TaskStatus.PENDING, attempts__gt=0),
            "lease_expired": Q(status=TaskStatus.RUNNING, lease_expires_at__lt=now),
            "cancel_requested": Q(status=TaskStatus.RUNNING, cancel_requested=True),
        }
        condition = conditions.get(self.value() or "")
        return queryset.filter(condition) if condition is not None else queryset


class RunningOnWorkerFilter(admin.SimpleListFilter):
    title = "running on worker"
    parameter_name = "worker"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        alive = dashboard.workers_in_state(dashboard.WorkerState.ALIVE, now=timezone.now())
        names = {w.id: str(w) for w in alive.order_by("-started_at")}
        if self.value() and self.value() not in names:
            names[self.value() or ""] = self.value() or ""
        return list(names.items())

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        # task_worker_idx (partial: running rows) serves it.
        if not self.value():
            return queryset
        return queryset.filter(status=TaskStatus.RUNNING, worker_id=self.value())


def _id_prefix_range(term: str) -> tuple[uuid.UUID, uuid.UUID] | None:
    """The ids starting with `term` (6+ hex digits, dashes optional), as a primary-key range."""
    digits = term.replace("-", "").lower()
    if not 6 <= len(digits) < 32 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


# Actions ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TaskAction:
    """One operator action: the service that performs it and how to explain a refusal."""

    name: str
    label: str
    transition: Callable[..., Task]
    past_tense: str
    # For the message and the button hint only; the service decides.
    allowed: tuple[TaskStatus, ...]
    rule: str


RETRY = TaskAction(
    name="retry_tasks",
    label="Retry",
    transition=task_retry,
    past_tense="retried",
    allowed=(TaskStatus.FAILED, TaskStatus.CANCELLED),
    rule="only failed or cancelled tasks can be retried",
)
CANCEL = TaskAction(
    name="cancel_tasks",
    label="Cancel",
    transition=task_cancel,
    past_tense="cancelled",
    allowed=(TaskStatus.PENDING, TaskStatus.RUNNING),
    rule="only pending or running tasks can be cancelled",
)
RUN_NOW = TaskAction(
    name="run_tasks_now",
    label="Run now",
    transition=task_run_now,
    past_tense="made ready to run now",
    allowed=(TaskStatus.PENDING,),
    rule="only pending tasks can be run now",
)
TASK_ACTIONS = (RETRY, CANCEL, RUN_NOW)


@dataclass(kw_only=True)
class ActionOutcome:
    changed: list[Task] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)  # status -> tasks refused
    missing: int = 0  # deleted since the page was shown
    truncated: bool = False  # more were selected than ACTION_MAX_TASKS


def apply_action(action: TaskAction, queryset: QuerySet[Task]) -> ActionOutcome:
    """Run the action's service on each selected task (one transaction each)."""
    outcome = ActionOutcome()
    ids = list(queryset.values_list("id", flat=True)[: ACTION_MAX_TASKS + 1])
    if len(ids) > ACTION_MAX_TASKS:
        ids, outcome.truncated = ids[:ACTION_MAX_TASKS], True
    for task_id in ids:
        try:
            outcome.changed.append(action.transition(task_id=task_id))
        except TransitionNotAllowed as exc:
            outcome.skipped[exc.task.status] += 1
        except TaskNotFound:
            outcome.missing += 1
    return outcome


def _tasks(n: int) -> str:
    return f"{n:,} task" if n == 1 else f"{n:,} tasks"


def describe_outcome(action: TaskAction, outcome: ActionOutcome) -> str:
    """E.g. "2 tasks retried; 1 skipped: only failed or cancelled tasks can be retried (1 running)"."""
    parts = []
    if action is CANCEL:
        cancelled = sum(1 for t in outcome.changed if t.status == TaskStatus.CANCELLED)
        stopping = len(outcome.changed) - cancelled
        if cancelled or not stopping:
            parts.append(f"{_tasks(cancelled)} cancelled")
        if stopping:
            running = "1 running task" if stopping == 1 else f"{stopping:,} running tasks"
            parts.append(f"{running} asked to stop (the handler may finish this attempt; it is not retried)")
    else:
        parts.append(f"{_tasks(len(outcome.changed))} {action.past_tense}")
    if outcome.skipped:
        statuses = ", ".join(f"{n:,} {status}" for status, n in sorted(outcome.skipped.items()))
        parts.append(f"{sum(outcome.skipped.values()):,} skipped: {action.rule} ({statuses})")
    if outcome.missing:
        parts.append(f"{_tasks(outcome.missing)} no longer exist{'s' if outcome.missing == 1 else ''}")
    if outcome.truncated:
        parts.append(f"only the first {ACTION_MAX_TASKS:,} selected were handled: run the action again for the rest")
    message = "; ".join(parts)
    return message[0].upper() + message[1:]


# Tasks ------------------------------------------------------------------------------


def _timestamp_display(field_name: str, description: str) -> Callable[[Any, Task], str]:
    @admin.display(description=description)
    def show(model_admin: Any, task: Task) -> str:
        return format_timestamp(getattr(task, field_name))

    return show


@admin.register(Task)
class TaskAdmin(TaskModelAdmin):
    list_display = (
        "short_id",
        "type",
        "status_cell",
        "queue",
        "priority",
        "attempts_display",
        "created",
        "run_after_display",
        "duration_display",
    )
    list_display_links = ("short_id",)
    list_filter = (
        "status",
        TaskConditionFilter,
        TaskTypeFilter,
        TaskQueueFilter,
        ("created_at", admin.DateFieldListFilter),
        RunningOnWorkerFilter,
    )
    # The search box shows only when search_fields is set; get_search_results does the work.
    search_fields = ("id", "type", "payload")
    search_help_text = "A task id (or its first 6+ characters), a type, or text in the payload."
    ordering = ("-created_at", "-id")
    # Only orderings an index serves: task_newest_idx, read either way.
    sortable_by = ("created",)
    list_per_page = 50
    paginator = TaskPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER
    actions = [RETRY.name, CANCEL.name, RUN_NOW.name]
    fieldsets = (
        (
            None,
            {
                "fields": (
                    ("status_display", "attempts_display", "priority"),
                    ("id", "type", "queue"),
                    "error",
                    "idempotency_key",
                )
            },
        ),
        (
            "Timing",
            {
                "fields": (
                    ("created_at_display", "run_after_full", "updated_at_display"),
                    ("started_at_display", "finished_at_display", "duration_display"),
                )
            },
        ),
        ("Worker", {"fields": (("worker_display", "lease_expires_at_display", "cancel_requested"),)}),
        ("Payload and result", {"fields": ("payload_display", "result_display"), "classes": ("tf-wide",)}),
        ("Errors, newest first", {"fields": ("errors_display",), "classes": ("tf-wide",)}),
    )
    readonly_fields = (
        "status_display",
        "attempts_display",
        "created_at_display",
        "run_after_full",
        "started_at_display",
        "finished_at_display",
        "duration_display",
        "updated_at_display",
        "worker_display",
        "lease_expires_at_display",
        "payload_display",
        "result_display",
        "errors_display",
    )

    class Media:
        css = {"all": ["tasks/admin.css"]}

    # Permissions: every write is a service call (an action); nothing is edited by hand.

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Tasks are enqueued through the API or task_enqueue(), which apply handler defaults and wake workers.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Task | None = None) -> bool:
        # Model level: the actions. Object level: no form. Saving a whole row would overwrite
        # what a worker wrote meanwhile (status, attempts, lease), so the task page is read-only.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def get_actions(
        self, request: HttpRequest, action_location: ActionLocation = ActionLocation.CHANGE_LIST
    ) -> dict[str, Any]:
        actions = super().get_actions(request, action_location=action_location)
        # "Select all" can mean millions of rows in one request; prunetasks deletes in batches.
        actions.pop("delete_selected", None)
        return actions

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return TaskChangeList

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        try:
            # A whole id is an exact primary-key lookup, nothing else.
            return queryset.filter(id=uuid.UUID(term)), False
        except ValueError:
            pass
        # Text search reads rows newest first until a page is full: matching payload text is
        # a scan (a pg_trgm GIN index on UPPER(payload::text) would serve it).
        condition = Q(type__icontains=term) | Q(payload__icontains=term)
        if (id_range := _id_prefix_range(term)) is not None:
            condition |= Q(id__range=id_range)
        return queryset.filter(condition), False

    # Extra pages: the dashboard.

    def get_urls(self) -> list[URLPattern]:
        return [
            path("dashboard/", self.admin_site.admin_view(self.dashboard_view), name="tasks_task_dashboard"),
            *super().get_urls(),
        ]

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        board = dashboard.dashboard_snapshot()
        context = {
            **self.admin_site.each_context(request),
            **dashboard_context(board),
            "title": "Dashboard",
            "opts": self.opts,
        }
        return TemplateResponse(request, "admin/tasks/dashboard.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Tasks", **(extra_context or {})})

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        task_id = _valid_uuid(object_id)
        status = Task.objects.filter(pk=task_id).values_list("status", flat=True).first() if task_id else None
        buttons = [
            {"name": a.name, "label": a.label, "applies": status in a.allowed, "rule": a.rule} for a in TASK_ACTIONS
        ]
        return super().change_view(request, object_id, form_url, {**(extra_context or {}), "task_actions": buttons})

    # Actions: on a selection in the list, and on one task from its page.

    def _run_action(self, request: HttpRequest, queryset: QuerySet[Task], action: TaskAction) -> None:
        outcome = apply_action(action, queryset)
        if outcome.changed and request.user.pk is not None:
            LogEntry.objects.log_actions(
                user_id=request.user.pk,
                queryset=outcome.changed,
                action_flag=CHANGE,
                change_message=f"{action.label} (admin action)",
            )
        if outcome.changed and not (outcome.skipped or outcome.missing or outcome.truncated):
            level = messages.SUCCESS
        elif outcome.changed:
            level = messages.WARNING
        else:
            level = messages.ERROR
        self.message_user(request, describe_outcome(action, outcome), level)

    @admin.action(
        permissions=["change"],
        description="Retry this task",
        description_plural="Retry selected tasks (failed or cancelled)",
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._run_action(request, queryset, RETRY)

    @admin.action(
        permissions=["change"],
        description="Cancel this task",
        description_plural="Cancel selected tasks (pending or running)",
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._run_action(request, queryset, CANCEL)

    @admin.action(
        permissions=["change"],
        description="Run this task now",
        description_plural="Run selected pending tasks now",
        location=[ActionLocation.CHANGE_LIST, ActionLocation.CHANGE_FORM],
    )
    def run_tasks_now(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        self._run_action(request, queryset, RUN_NOW)

    # Columns and fields.

    @admin.display(description="id")
    def short_id(self, task: Task) -> str:
        return format_html('<code class="tf-id" title="{}">{}</code>', task.id, str(task.id)[:8])

    @admin.display(description="status")
    def status_display(self, task: Task) -> str:
        now = timezone.now()
        notes = []
        if task.status == TaskStatus.PENDING and task.run_after > now:
            notes.append(f"waits {format_duration(task.run_after - now)}")
        if task.status == TaskStatus.PENDING and task.attempts:
            notes.append("retrying")
        if task.status == TaskStatus.RUNNING and task.cancel_requested:
            notes.append("cancel requested")
        if task.status == TaskStatus.RUNNING and task.lease_expires_at and task.lease_expires_at < now:
            notes.append("lease expired")
        badge = status_badge(task.status)
        if not notes:
            return badge
        return format_html('{} <span class="tf-quiet">{}</span>', badge, ", ".join(notes))

    @admin.display(description="attempts")
    def attempts_display(self, task: Task) -> str:
        return f"{task.attempts} / {task.max_attempts}"

    @admin.display(description="created", ordering="created_at")
    def created(self, task: Task) -> str:
        return format_timestamp(task.created_at, compact=True)

    @admin.display(description="run after")
    def run_after_display(self, task: Task) -> str:
        return format_timestamp(task.run_after, compact=True)

    @admin.display(description="duration")
    def duration_display(self, task: Task) -> str:
        if task.duration is not None:
            return format_duration(task.duration)
        if task.status == TaskStatus.RUNNING and task.started_at:
            return format_html(
                '<span class="tf-quiet">{} so far</span>', format_duration(timezone.now() - task.started_at)
            )
        return "-"

    @admin.display(description="status")
    def status_cell(self, task: Task) -> str:
        """The list's status: the badge, and under it the last error of a task that is not done."""
        if not task.error or task.status == TaskStatus.DONE:
            return self.status_display(task)
        head = task.error.splitlines()[0]
        short = head if len(head) <= LIST_ERROR_CHARS else head[: LIST_ERROR_CHARS - 1] + "…"
        return format_html(
            '{}<span class="tf-error tf-list-error" title="{}">{}</span>',
            self.status_display(task),
            task.error[:1000],
            short,
        )

    created_at_display = _timestamp_display("created_at", "created")
    started_at_display = _timestamp_display("started_at", "started (last attempt)")
    finished_at_display = _timestamp_display("finished_at", "finished")
    updated_at_display = _timestamp_display("updated_at", "updated")
    lease_expires_at_display = _timestamp_display("lease_expires_at", "lease expires")
    run_after_full = _timestamp_display("run_after", "run after")

    @admin.display(description="worker")
    def worker_display(self, task: Task) -> str:
        if not task.worker_id:
            return "-"
        worker = Worker.objects.filter(id=task.worker_id).first()
        if worker is None:
            return format_html("<code>{}</code> (no longer registered)", task.worker_id)
        state = dashboard.worker_state(worker, now=timezone.now())
        url = reverse("admin:tasks_worker_change", args=[quote(worker.id)])
        return format_html('<a href="{}"><code>{}</code></a> {}', url, worker.id, status_badge(state))

    @admin.display(description="payload")
    def payload_display(self, task: Task) -> str:
        return pretty_json(task.payload)

    @admin.display(description="result")
    def result_display(self, task: Task) -> str:
        return pretty_json(task.result)

    @admin.display(description="errors")
    def errors_display(self, task: Task) -> str:
        entries = [e for e in task.errors if isinstance(e, dict)]
        if not entries:
            return "None"
        items = []
        for index, entry in enumerate(reversed(entries)):
            traceback = str(entry.get("traceback") or "")
            detail = (
                format_html(
                    '<details{}><summary>Traceback</summary><pre class="tf-code">{}</pre></details>',
                    " open" if index == 0 else "",
                    traceback,
                )
                if traceback
                else format_html('<p class="tf-quiet">{}</p>', "No traceback: the worker was lost mid-attempt.")
            )
            items.append(
                (
                    entry.get("attempt", "?"),
                    _entry_time(entry.get("at")),
                    entry.get("type", "Error"),
                    entry.get("message", ""),
                    entry.get("worker_id") or "unknown worker",
                    detail,
                )
            )
        rows = format_html_join(
            "",
            '<li><div class="tf-error-head"><span class="tf-attempt">attempt {}</span> '
            '{} <strong>{}</strong>: <span class="tf-error-message">{}</span> '
            '<span class="tf-quiet">on {}</span></div>{}</li>',
            items,
        )
        return format_html('<ol class="tf-errors">{}</ol>', rows)


def _entry_time(value: Any) -> str:
    """An error entry's "at" (ISO 8601, as tasks/queue.py writes it) as a <time> element."""
    try:
        return format_timestamp(datetime.datetime.fromisoformat(str(value)))
    except ValueError:
        return str(value or "?")


def _valid_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


# Workers ----------------------------------------------------------------------------


class WorkerStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [(state.value, state.value) for state in dashboard.WorkerState]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in dashboard.WorkerState:
            return queryset
        state = dashboard.WorkerState(self.value() or "")
        return queryset.filter(dashboard.worker_state_condition(state, now=timezone.now()))


@admin.register(Worker)
class WorkerAdmin(WorkerModelAdmin):
    list_display = (
        "name",
        "state_display",
        "queues_display",
        "concurrency",
        "running_display",
        "started",
        "last_heartbeat",
        "processed_count",
        "failed_count",
    )
    list_filter = (WorkerStateFilter, "hostname")
    show_facets = admin.ShowFacets.NEVER
    search_fields = ("id", "hostname")
    ordering = ("-started_at",)
    sortable_by = ("started", "last_heartbeat", "processed_count", "failed_count")
    fields = (
        "id",
        "state_display",
        "hostname",
        "pid",
        "queues_display",
        "concurrency",
        "running_display",
        "started",
        "last_heartbeat",
        "stopped",
        "processed_count",
        "failed_count",
    )
    readonly_fields = fields

    class Media:
        css = {"all": ["tasks/admin.css"]}

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers register themselves

    def has_change_permission(self, request: HttpRequest, obj: Worker | None = None) -> bool:
        return False  # a registry row is what the process reported; deleting forgets a dead one

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        return super().changelist_view(request, {"title": "Workers", **(extra_context or {})})

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        return dashboard.with_running_counts(super().get_queryset(request))

    @admin.display(description="worker")
    def name(self, worker: Worker) -> str:
        return format_html('<code title="{}">{}</code>', worker.id, worker)

    @admin.display(description="state")
    def state_display(self, worker: Worker) -> str:
        now = timezone.now()
        state = dashboard.worker_state(worker, now=now)
        if state == dashboard.WorkerState.UNRESPONSIVE:
            silent = format_duration(now - worker.last_heartbeat_at)
            return format_html('{} <span class="tf-quiet">silent {}</span>', status_badge(state), silent)
        return status_badge(state)

    @admin.display(description="queues")
    def queues_display(self, worker: Worker) -> str:
        return ", ".join(worker.queues) if worker.queues else "all"

    @admin.display(description="running")
    def running_display(self, worker: Worker) -> str:
        running = int(getattr(worker, "running_tasks", 0))
        if not running:
            return "0"
        url = _changelist_url(Task, worker=worker.id)
        return format_html('<a href="{}">{} running</a>', url, running)

    @admin.display(description="started", ordering="started_at")
    def started(self, worker: Worker) -> str:
        return format_timestamp(worker.started_at, compact=True)

    @admin.display(description="heartbeat", ordering="last_heartbeat_at")
    def last_heartbeat(self, worker: Worker) -> str:
        return format_timestamp(worker.last_heartbeat_at, compact=True)

    @admin.display(description="stopped")
    def stopped(self, worker: Worker) -> str:
        return format_timestamp(worker.stopped_at)
