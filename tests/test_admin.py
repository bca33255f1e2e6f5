"""The operator's console (tasks/admin.py, tasks/dashboard.py) through Django's test client."""

import datetime
import re
import uuid
from html import unescape as html_unescape

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from tasks import admin as task_admin
from tasks import dashboard
from tasks.models import Task, TaskStatus, Worker

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/tasks/task/"
DASHBOARD = "/admin/tasks/task/dashboard/"
WORKERS = "/admin/tasks/worker/"


def _task(**fields) -> Task:
    """A task row in any state; `age` (a timedelta) backdates created_at."""
    age = fields.pop("age", datetime.timedelta(0))
    now = timezone.now()
    fields.setdefault("type", "noop")
    fields.setdefault("created_at", now - age)
    fields.setdefault("run_after", fields["created_at"])
    return Task.objects.create(**fields)


def _failed(**fields) -> Task:
    now = timezone.now()
    entry = {
        "attempt": 1,
        "at": "2026-01-01T00:00:00Z",
        "type": "RuntimeError",
        "message": "boom",
        "traceback": 'Traceback (most recent call last):\n  File "job.py", line 1\nRuntimeError: boom',
        "worker_id": "host-1-abc",
    }
    defaults = {
        "status": TaskStatus.FAILED,
        "attempts": 1,
        "max_attempts": 1,
        "started_at": now - datetime.timedelta(seconds=2),
        "finished_at": now,
        "error": "RuntimeError: boom",
        "errors": [entry],
    }
    return _task(**{**defaults, **fields})


def _ids(response) -> list[str]:
    """Short ids of the rows in a changelist, top to bottom."""
    return re.findall(r'<code class="tf-id" title="([0-9a-f-]{36})">', response.content.decode())


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _status(task: Task) -> str:
    return Task.objects.values_list("status", flat=True).get(id=task.id)


# Access -------------------------------------------------------------------------------


@pytest.mark.parametrize("url", [CHANGELIST, DASHBOARD, WORKERS, "/admin/"])
def test_admin__anonymous_is_sent_to_login(client, url):
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", [CHANGELIST, DASHBOARD, WORKERS])
def test_admin__non_staff_user_is_sent_to_login(client, url):
    User.objects.create_user("visitor", password="pw")
    client.login(username="visitor", password="pw")
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


@pytest.mark.parametrize("url", [CHANGELIST, DASHBOARD, WORKERS])
def test_admin__staff_without_permissions_is_forbidden(client, url):
    User.objects.create_user("intern", password="pw", is_staff=True)
    client.login(username="intern", password="pw")
    assert client.get(url).status_code == 403


def test_admin__view_only_staff_sees_tasks_but_cannot_act(client):
    user = User.objects.create_user("auditor", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.login(username="auditor", password="pw")
    task = _failed()
    response = client.get(CHANGELIST)
    assert response.status_code == 200
    assert 'name="action"' not in response.content.decode()
    assert client.get(DASHBOARD).status_code == 200
    client.post(CHANGELIST, {"action": "retry_tasks", "_selected_action": [task.id]})
    assert _status(task) == TaskStatus.FAILED


def test_admin__login_form_lets_a_superuser_in(client, admin_user):
    response = client.post("/admin/login/?next=/admin/", {"username": "admin", "password": "password"})
    assert response.status_code == 302
    assert client.get(CHANGELIST).status_code == 200


# The task list --------------------------------------------------------------------------


def test_changelist__newest_first_with_the_operator_columns(admin_client):
    old = _task(type="email", age=datetime.timedelta(hours=2), queue="mail", priority=5)
    new = _failed(type="webhook", age=datetime.timedelta(minutes=1))
    response = admin_client.get(CHANGELIST)
    assert response.status_code == 200
    assert _ids(response) == [str(new.id), str(old.id)]
    html = response.content.decode()
    for header in ("type", "status", "queue", "priority", "attempts", "created", "run after", "duration"):
        assert f">{header}</" in html.lower() or f">{header}<" in html.lower(), header
    assert '<span class="tf-badge tf-status-failed">failed</span>' in html
    assert '<span class="tf-badge tf-status-pending">pending</span>' in html
    assert "1 / 1" in html  # attempts of max
    assert "2.0 s" in html  # the failed task's duration
    assert "RuntimeError: boom" in html  # its last error


def test_changelist__status_filter(admin_client):
    failed = _failed()
    _task(status=TaskStatus.DONE)
    _task()
    response = admin_client.get(CHANGELIST, {"status__exact": "failed"})
    assert _ids(response) == [str(failed.id)]


def test_changelist__type_and_queue_filters(admin_client):
    email = _task(type="email", queue="mail")
    _task(type="noop")
    assert _ids(admin_client.get(CHANGELIST, {"type": "email"})) == [str(email.id)]
    assert _ids(admin_client.get(CHANGELIST, {"queue": "mail"})) == [str(email.id)]
    assert _ids(admin_client.get(CHANGELIST, {"type": "email", "queue": "default"})) == []


def test_changelist__type_and_queue_choices_come_from_registry_recent_rows_and_workers(admin_client):
    _task(type="legacy_import", queue="imports")
    Worker.objects.create(id="w-1", hostname="h", pid=1, queues=["reports"], concurrency=2)
    html = admin_client.get(CHANGELIST, {"type": "from_a_bookmark"}).content.decode()
    for choice in ("?type=noop", "?type=email", "?type=legacy_import", "?type=from_a_bookmark"):
        assert choice in html, choice
    for choice in ("queue=default", "queue=imports", "queue=reports"):
        assert choice in html, choice


def test_changelist__condition_filter(admin_client):
    now = timezone.now()
    scheduled = _task(run_after=now + datetime.timedelta(hours=1))
    ready = _task(run_after=now - datetime.timedelta(seconds=1))
    retrying = _task(attempts=1, run_after=now + datetime.timedelta(seconds=30))
    stuck = _task(status=TaskStatus.RUNNING, worker_id="gone", lease_expires_at=now - datetime.timedelta(minutes=1))
    _task(status=TaskStatus.RUNNING, worker_id="here", lease_expires_at=now + datetime.timedelta(minutes=1))
    assert set(_ids(admin_client.get(CHANGELIST, {"condition": "scheduled"}))) == {str(scheduled.id), str(retrying.id)}
    assert _ids(admin_client.get(CHANGELIST, {"condition": "ready"})) == [str(ready.id)]
    assert _ids(admin_client.get(CHANGELIST, {"condition": "retrying"})) == [str(retrying.id)]
    assert _ids(admin_client.get(CHANGELIST, {"condition": "lease_expired"})) == [str(stuck.id)]


def test_changelist__created_date_filter(admin_client):
    recent = _task(age=datetime.timedelta(days=1))
    _task(age=datetime.timedelta(days=30))
    html = admin_client.get(CHANGELIST).content.decode()
    past_week = html_unescape(re.search(r'<a href="(\?created_at__gte=[^"]+)"[^>]*>Past 7 days</a>', html).group(1))
    response = admin_client.get(CHANGELIST + past_week)
    assert _ids(response) == [str(recent.id)]


def test_changelist__running_on_worker_filter(admin_client):
    Worker.objects.create(id="w-alive", hostname="h", pid=1, queues=[], concurrency=2)
    mine = _task(status=TaskStatus.RUNNING, worker_id="w-alive")
    _task(status=TaskStatus.RUNNING, worker_id="w-other")
    _task(status=TaskStatus.DONE, worker_id="w-alive")
    response = admin_client.get(CHANGELIST, {"worker": "w-alive"})
    assert _ids(response) == [str(mine.id)]


@pytest.mark.parametrize(
    ("term", "expected"),
    [
        ("full-id", {"target"}),
        ("id-prefix", {"target"}),
        ("resize", {"target"}),  # type, case-insensitively
        ("Invoice-4711", {"target"}),  # payload text
        ("nothing-matches-this", set()),
    ],
)
def test_changelist__search_by_id_type_and_payload(admin_client, term, expected):
    target = _task(type="resize_image", payload={"invoice": "INVOICE-4711", "width": 300})
    other = _task(type="noop", payload={"invoice": "INVOICE-1"})
    named = {"target": str(target.id), "other": str(other.id)}
    query = {"full-id": str(target.id), "id-prefix": str(target.id)[:8]}.get(term, term)
    response = admin_client.get(CHANGELIST, {"q": query})
    assert set(_ids(response)) == {named[n] for n in expected}


def test_changelist__search_by_full_id_is_one_primary_key_lookup(admin_client):
    task = _task()
    with CaptureQueriesContext(connection) as queries:
        admin_client.get(CHANGELIST, {"q": str(task.id).upper()})
    listing = [q["sql"] for q in queries if 'FROM "tasks_task"' in q["sql"] and "LIKE" in q["sql"].upper()]
    assert listing == []


# The million-row concern -----------------------------------------------------------------


def _task_table_queries(queries: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if '"tasks_task"' in q["sql"]]


@pytest.mark.parametrize(
    "params",
    [{}, {"status__exact": "failed"}, {"type": "noop", "queue": "default"}, {"q": "boom"}, {"condition": "ready"}],
)
def test_changelist__never_counts_or_lists_distinct_over_the_whole_table(
    admin_client, django_assert_max_num_queries, params
):
    for i in range(60):
        _task(payload={"n": i}) if i % 2 else _failed(payload={"n": i})
    with django_assert_max_num_queries(12), CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST, params)
    assert response.status_code == 200
    for sql in _task_table_queries(queries):
        upper = sql.upper()
        if "COUNT(" in upper:
            # The paginator's count reads at most BOUNDED_COUNT_LIMIT + 1 rows.
            assert re.search(r"LIMIT \d+\) SUBQUERY", upper), sql
        if "DISTINCT" in upper:
            raise AssertionError(f"DISTINCT over the task table on a page load: {sql}")
        if upper.startswith("SELECT") and "COUNT(" not in upper and "LIMIT" not in upper:
            # Every read of task rows is bounded: by LIMIT, or (the stock ChangeList's shortcut
            # for a single page) by an exact count that fits on one page.
            changelist = response.context["cl"]
            assert changelist.paginator.approximate_count.exact, sql
            assert changelist.result_count <= changelist.list_per_page, sql
    # The list never fetches the large JSON columns.
    page_query = next(q for q in _task_table_queries(queries) if "ORDER BY" in q and '"created_at" DESC' in q)
    assert '"tasks_task"."payload"' not in page_query.split("FROM")[0]
    assert '"tasks_task"."errors"' not in page_query.split("FROM")[0]


def test_changelist__past_the_count_limit_the_count_is_an_estimate_or_lower_bound(admin_client, monkeypatch):
    monkeypatch.setattr(dashboard, "BOUNDED_COUNT_LIMIT", 5)
    for _ in range(8):
        _task()
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE tasks_task")
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST)
    html = response.content.decode()
    if connection.vendor == "postgresql":
        # Unfiltered: the planner's estimate, and no COUNT at all.
        assert "≈8 tasks" in html
        assert not [sql for sql in _task_table_queries(queries) if "COUNT(" in sql.upper()]
    else:
        assert "5+ tasks" in html
    filtered = admin_client.get(CHANGELIST, {"status__exact": "pending"}).content.decode()
    assert ("≈" in filtered) if connection.vendor == "postgresql" else ("5+ tasks" in filtered)


def test_count_tasks__exact_below_the_limit():
    for _ in range(3):
        _task()
    # On PostgreSQL the unfiltered count asks the planner first: for a small table its
    # estimate is far below the limit, so the rows are counted.
    count = dashboard.count_tasks(Task.objects.all())
    assert (count.value, count.exact, str(count)) == (3, True, "3")
    assert dashboard.count_tasks(Task.objects.filter(status=TaskStatus.FAILED), limit=5).value == 0


def test_count_tasks__filtered_past_the_limit():
    for _ in range(8):
        _task()
    count = dashboard.count_tasks(Task.objects.filter(status=TaskStatus.PENDING), limit=5)
    assert not count.exact
    if connection.vendor == "postgresql":
        assert count.precision == dashboard.CountPrecision.ESTIMATE
        assert count.value >= 6
        assert str(count).startswith("≈")
    else:
        assert (count.precision, count.value, str(count)) == (dashboard.CountPrecision.AT_LEAST, 6, "5+")


def test_paginator__estimated_count_links_no_pages_past_the_current_window(monkeypatch):
    monkeypatch.setattr(dashboard, "BOUNDED_COUNT_LIMIT", 5)
    for _ in range(8):
        _task()
    paginator = task_admin.TaskPaginator(Task.objects.filter(status=TaskStatus.PENDING), 1)
    assert not paginator.approximate_count.exact
    pages = list(paginator.get_elided_page_range(1))
    assert pages[-1] == paginator.ELLIPSIS
    assert paginator.num_pages not in pages


@pytest.mark.postgres
def test_changelist__postgresql_plans_use_the_indexes(admin_client, rf, admin_user):
    """With 20,000 rows and fresh statistics, each listing is an index scan, never a sequential one."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO tasks_task (id, type, payload, status, queue, priority, attempts, max_attempts,
                                    run_after, created_at, updated_at, error, errors, cancel_requested)
            SELECT gen_random_uuid(),
                   CASE WHEN g % 200 = 0 THEN 'email' ELSE 'noop' END,
                   jsonb_build_object('n', g),
                   CASE WHEN g % 100 = 0 THEN 'failed' WHEN g % 50 = 0 THEN 'pending' ELSE 'done' END,
                   CASE WHEN g % 300 = 0 THEN 'reports' ELSE 'default' END,
                   0, 1, 3, now(), now() - g * interval '1 second', now(), '', '[]'::jsonb, false
            FROM generate_series(1, 20000) AS g
            """
        )
        cursor.execute("ANALYZE tasks_task")
    model_admin = task_admin.admin.site._registry[Task]

    def plan(params: dict[str, str]) -> str:
        request = rf.get(CHANGELIST, params)
        request.user = admin_user
        changelist = model_admin.get_changelist_instance(request)
        return str(changelist.result_list.explain())

    assert "task_newest_idx" in plan({})
    assert "task_status_created_idx" in plan({"status__exact": "failed"})
    for params in ({"type": "email"}, {"queue": "reports"}, {"status__exact": "pending", "type": "email"}):
        assert "Seq Scan" not in plan(params), params
        assert "Index" in plan(params), params
    # And the page load counts nothing on the unfiltered table: the estimate is past the limit.
    with CaptureQueriesContext(connection) as queries:
        response = admin_client.get(CHANGELIST)
    assert re.search(r"≈\d{2},\d{3} tasks", response.content.decode())
    assert not [sql for sql in _task_table_queries(queries) if "COUNT(" in sql.upper()]


# The task page --------------------------------------------------------------------------


def test_change_page__shows_payload_result_errors_and_worker(admin_client):
    Worker.objects.create(id="host-1-abc", hostname="host", pid=1, queues=[], concurrency=2)
    task = _failed(payload={"to": "ops@example.com", "nested": {"a": [1, 2]}}, worker_id="host-1-abc")
    second = {**task.errors[0], "attempt": 2, "message": "second boom", "traceback": ""}
    Task.objects.filter(id=task.id).update(errors=[*task.errors, second])
    response = admin_client.get(reverse("admin:tasks_task_change", args=[task.id]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="tf-code">{\n  &quot;to&quot;: &quot;ops@example.com&quot;,\n  &quot;nested&quot;: {' in html
    assert "RuntimeError: boom" in html
    assert html.index("second boom") < html.index("boom</span>")  # newest first
    assert '<pre class="tf-code">Traceback (most recent call last):' in html
    assert "No traceback: the worker was lost mid-attempt." in html
    assert reverse("admin:tasks_worker_change", args=["host-1-abc"]) in html
    assert re.search(r'<time datetime="\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ">', html)


def test_change_page__is_read_only(admin_client):
    task = _failed()
    url = reverse("admin:tasks_task_change", args=[task.id])
    html = admin_client.get(url).content.decode()
    for name in ("type", "status", "payload", "attempts", "queue", "priority", "run_after"):
        assert f'name="{name}"' not in html
    assert 'name="_save"' not in html
    response = admin_client.post(url, {"type": "edited", "status": "done", "_save": "Save"})
    assert response.status_code == 403
    task.refresh_from_db()
    assert (task.type, task.status) == ("noop", TaskStatus.FAILED)


def test_change_page__offers_the_actions_that_apply(admin_client):
    task = _failed()
    html = admin_client.get(reverse("admin:tasks_task_change", args=[task.id])).content.decode()
    assert re.search(r'<button[^>]*value="retry_tasks"(?![^>]*disabled)', html)
    assert re.search(r'<button[^>]*value="cancel_tasks"[^>]*disabled', html)
    assert re.search(r'<button[^>]*value="run_tasks_now"[^>]*disabled', html)


def test_admin__tasks_cannot_be_added_or_bulk_deleted(admin_client):
    assert admin_client.get("/admin/tasks/task/add/").status_code == 403
    assert 'value="delete_selected"' not in admin_client.get(CHANGELIST).content.decode()


# Actions --------------------------------------------------------------------------------


def _act(client, action: str, *tasks: Task, **extra):
    data = {"action": action, "_selected_action": [str(t.id) for t in tasks], **extra}
    return client.post(CHANGELIST, data, follow=True)


def test_retry_action__on_a_selection_says_what_changed_and_why_not(admin_client):
    failed, cancelled = _failed(), _task(status=TaskStatus.CANCELLED)
    running = _task(status=TaskStatus.RUNNING, worker_id="w")
    response = _act(admin_client, "retry_tasks", failed, cancelled, running)
    assert _messages(response) == [
        "2 tasks retried; 1 skipped: only failed or cancelled tasks can be retried (1 running)"
    ]
    assert [_status(t) for t in (failed, cancelled, running)] == ["pending", "pending", "running"]
    failed.refresh_from_db()
    assert failed.attempts == 0
    assert failed.errors  # earlier errors kept for the record
    assert LogEntry.objects.filter(object_id__in=[str(failed.id), str(cancelled.id)]).count() == 2


def test_retry_action__on_one_task(admin_client):
    failed = _failed()
    response = _act(admin_client, "retry_tasks", failed)
    assert _messages(response) == ["1 task retried"]
    assert _status(failed) == TaskStatus.PENDING


def test_retry_action__nothing_applicable_is_an_error(admin_client):
    done = _task(status=TaskStatus.DONE)
    response = _act(admin_client, "retry_tasks", done)
    [message] = list(get_messages(response.wsgi_request))
    assert str(message) == "0 tasks retried; 1 skipped: only failed or cancelled tasks can be retried (1 done)"
    assert message.level_tag == "error"
    assert _status(done) == TaskStatus.DONE


def test_cancel_action__cancels_pending_and_asks_running_to_stop(admin_client):
    pending, running, done = _task(), _task(status=TaskStatus.RUNNING, worker_id="w"), _task(status=TaskStatus.DONE)
    response = _act(admin_client, "cancel_tasks", pending, running, done)
    assert _messages(response) == [
        "1 task cancelled; 1 running task asked to stop (the handler may finish this attempt; it is not retried); "
        "1 skipped: only pending or running tasks can be cancelled (1 done)"
    ]
    assert [_status(t) for t in (pending, running, done)] == ["cancelled", "running", "done"]
    assert Task.objects.get(id=running.id).cancel_requested


def test_cancel_action__on_one_task(admin_client):
    pending = _task()
    assert _messages(_act(admin_client, "cancel_tasks", pending)) == ["1 task cancelled"]
    assert _status(pending) == TaskStatus.CANCELLED


def test_run_now_action__makes_waiting_tasks_ready(admin_client):
    later = timezone.now() + datetime.timedelta(hours=1)
    waiting, retrying, failed = _task(run_after=later), _task(run_after=later, attempts=1), _failed()
    response = _act(admin_client, "run_tasks_now", waiting, retrying, failed)
    assert _messages(response) == [
        "2 tasks made ready to run now; 1 skipped: only pending tasks can be run now (1 failed)"
    ]
    assert Task.objects.filter(id__in=[waiting.id, retrying.id], run_after__lte=timezone.now()).count() == 2
    assert _status(failed) == TaskStatus.FAILED


def test_run_now_action__on_one_task(admin_client):
    waiting = _task(run_after=timezone.now() + datetime.timedelta(hours=1))
    assert _messages(_act(admin_client, "run_tasks_now", waiting)) == ["1 task made ready to run now"]
    assert Task.objects.get(id=waiting.id).run_after <= timezone.now()


def test_actions__select_across_is_capped_and_says_so(admin_client, monkeypatch):
    monkeypatch.setattr(task_admin, "ACTION_MAX_TASKS", 2)
    tasks = [_failed(age=datetime.timedelta(minutes=i)) for i in range(3)]
    response = admin_client.post(
        f"{CHANGELIST}?status__exact=failed",
        {"action": "retry_tasks", "select_across": "1", "_selected_action": [str(tasks[0].id)]},
        follow=True,
    )
    assert _messages(response) == [
        "2 tasks retried; only the first 2 selected were handled: run the action again for the rest"
    ]
    assert Task.objects.filter(status=TaskStatus.FAILED).count() == 1


@pytest.mark.parametrize(
    ("action", "status", "expected_status", "message"),
    [
        ("retry_tasks", TaskStatus.FAILED, TaskStatus.PENDING, "1 task retried"),
        ("cancel_tasks", TaskStatus.PENDING, TaskStatus.CANCELLED, "1 task cancelled"),
        (
            "retry_tasks",
            TaskStatus.RUNNING,
            TaskStatus.RUNNING,
            "0 tasks retried; 1 skipped: only failed or cancelled tasks can be retried (1 running)",
        ),
    ],
)
def test_change_page_action__acts_on_that_task_and_returns_to_it(
    admin_client, action, status, expected_status, message
):
    task = _task(status=status, worker_id="w" if status == TaskStatus.RUNNING else None)
    url = reverse("admin:tasks_task_change", args=[task.id])
    response = admin_client.post(url, {"CHANGE_FORM-action": action, "_selected_action": str(task.id)})
    assert response.status_code == 302
    assert response["Location"] == url
    assert _messages(admin_client.get(url)) == [message]
    assert _status(task) == expected_status


# Workers --------------------------------------------------------------------------------


def _worker(worker_id: str, *, heartbeat_age: float = 1.0, stopped: bool = False, **fields) -> Worker:
    now = timezone.now()
    return Worker.objects.create(
        id=worker_id,
        hostname=fields.pop("hostname", "host-a"),
        pid=fields.pop("pid", 100),
        queues=fields.pop("queues", []),
        concurrency=fields.pop("concurrency", 4),
        last_heartbeat_at=now - datetime.timedelta(seconds=heartbeat_age),
        stopped_at=now if stopped else None,
        **fields,
    )


def test_workers_page__state_queues_heartbeat_counts(admin_client):
    _worker("alive-1", queues=["emails", "reports"], processed_count=1234, failed_count=5, pid=11)
    _worker("stopped-1", stopped=True, pid=22)
    _worker("lost-1", heartbeat_age=600, pid=33)
    _task(status=TaskStatus.RUNNING, worker_id="alive-1")
    _task(status=TaskStatus.RUNNING, worker_id="alive-1")
    response = admin_client.get(WORKERS)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="tf-badge tf-status-alive">alive</span>' in html
    assert '<span class="tf-badge tf-status-stopped">stopped</span>' in html
    assert '<span class="tf-badge tf-status-unresponsive">unresponsive</span>' in html
    assert "silent 10 min" in html
    assert "emails, reports" in html
    assert "1234" in html
    assert f'<a href="{CHANGELIST}?worker=alive-1">2 running</a>' in html


def test_workers_page__state_filter(admin_client):
    _worker("alive-1", pid=11)
    _worker("stopped-1", stopped=True, pid=22)
    _worker("lost-1", heartbeat_age=600, pid=33)
    for state, pid in (("alive", "11"), ("stopped", "22"), ("unresponsive", "33")):
        html = admin_client.get(WORKERS, {"state": state}).content.decode()
        assert re.findall(r">host-a:(\d+)</code>", html) == [pid], state


def test_workers_page__is_read_only(admin_client):
    _worker("alive-1")
    assert admin_client.get("/admin/tasks/worker/add/").status_code == 403
    response = admin_client.post(reverse("admin:tasks_worker_change", args=["alive-1"]), {"pid": "9", "_save": "1"})
    assert response.status_code == 403
    assert Worker.objects.get(id="alive-1").pid == 100


# The dashboard ----------------------------------------------------------------------------


def test_dashboard__numbers_match_the_database(admin_client):
    now = timezone.now()
    for _ in range(3):
        _task(type="email", age=datetime.timedelta(minutes=5))
    oldest = _task(type="noop", age=datetime.timedelta(hours=2))
    _task(type="noop", run_after=now + datetime.timedelta(hours=1))
    _task(type="noop", status=TaskStatus.RUNNING, worker_id="alive-1")
    for minutes_ago in (1, 1, 5, 90):
        finished = now - datetime.timedelta(minutes=minutes_ago)
        _task(type="email", status=TaskStatus.DONE, started_at=finished, finished_at=finished)
    _failed(type="webhook", finished_at=now - datetime.timedelta(minutes=2), error="HTTPError: 503")
    _failed(type="webhook", finished_at=now - datetime.timedelta(minutes=3), error="HTTPError: 503")
    _failed(type="email", finished_at=now - datetime.timedelta(hours=3))
    _task(type="noop", status=TaskStatus.CANCELLED)
    _worker("alive-1", concurrency=3)
    _worker("lost-1", heartbeat_age=600)

    response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    board = response.context["dashboard"]
    for status in TaskStatus.values:
        assert board.status_counts[status].value == Task.objects.filter(status=status).count(), status
        assert board.status_counts[status].exact
    assert board.ready.value == Task.objects.ready().count() == 4
    assert board.oldest_pending.id == oldest.id
    assert datetime.timedelta(hours=2) <= board.oldest_pending_age < datetime.timedelta(hours=2, minutes=1)
    assert (board.done_last_hour, board.failed_last_hour) == (3, 2)
    assert sum(m.done for m in board.throughput) == 3
    assert len(board.throughput) == dashboard.THROUGHPUT_MINUTES
    rows = {row.type: row for row in board.types}
    assert (rows["email"].pending, rows["email"].failed, rows["email"].done_last_hour) == (3, 1, 3)
    assert (rows["noop"].pending, rows["noop"].running) == (2, 1)
    assert (rows["webhook"].failed, rows["webhook"].failed_last_hour) == (2, 2)
    top_group = board.failure_groups[0]
    assert (top_group.type, top_group.error, top_group.count) == ("webhook", "HTTPError: 503", 2)
    assert [w.id for w in board.workers_alive] == ["alive-1"]
    assert board.workers_lost == 1

    html = response.content.decode()
    assert f'href="{CHANGELIST}?status__exact=failed" data-status="failed"' in html
    assert re.search(
        r'tf-tile-failed"[^>]*>\s*<span class="tf-tile-label">Failed</span>\s*'
        r'<span class="tf-tile-value tf-nonzero" data-count="3">3</span>',
        html,
    )
    assert f'href="{CHANGELIST}?status__exact=failed&amp;type=webhook"' in html
    assert f'href="{CHANGELIST}?type=noop&amp;status__exact=pending">2<' in html
    assert "2 h" in html  # the oldest pending task's age
    assert html.count('class="tf-bar-done"') == 2  # two minutes with finished tasks
    assert "1 worker went silent" in html


def test_dashboard__alerts_when_work_waits_and_no_worker_lives(admin_client):
    _task()
    html = admin_client.get(DASHBOARD).content.decode()
    assert "1 task ready to run and no worker is alive." in html
    assert "No worker is alive." in html


def test_dashboard__reads_a_bounded_number_of_rows(admin_client, django_assert_max_num_queries):
    for i in range(20):
        _failed(payload={"n": i})
    with django_assert_max_num_queries(20), CaptureQueriesContext(connection) as queries:
        admin_client.get(DASHBOARD)
    for sql in _task_table_queries(queries):
        upper = sql.upper()
        # LIMITed reads of the newest rows of one status, the last hour's finished rows
        # (the throughput itself), or per-worker counts on the registry page of live workers.
        assert "LIMIT" in upper or '"FINISHED_AT" >=' in upper or upper.startswith('SELECT "TASKS_WORKER"'), sql
        assert "DISTINCT" not in upper, sql


def test_throughput_chart__bars_scale_to_a_round_maximum():
    start = timezone.now().replace(second=0, microsecond=0)
    minutes = [
        dashboard.ThroughputMinute(minute=start + datetime.timedelta(minutes=i), done=d, failed=f)
        for i, (d, f) in enumerate([(0, 0), (30, 10), (7, 0)])
    ]
    chart = dashboard.throughput_chart(minutes)
    plot_height = chart.BOTTOM - chart.TOP
    assert chart.peak == 40
    assert [t.label for t in chart.y_ticks] == ["0", "25", "50"]
    assert chart.bars[0].done_height == chart.bars[0].failed_height == 0
    assert chart.bars[1].done_height == pytest.approx(plot_height * 30 / 50, abs=0.01)
    assert chart.bars[1].failed_y + chart.bars[1].failed_height == pytest.approx(chart.bars[1].done_y, abs=0.02)
    assert "30 done, 10 failed" in chart.bars[1].title
    one = dashboard.throughput_chart([dashboard.ThroughputMinute(minute=start, done=1, failed=0)])
    assert [t.label for t in one.y_ticks] == ["0", "1"]


def test_admin_index__links_to_the_dashboard(admin_client):
    html = admin_client.get("/admin/").content.decode()
    assert f'href="{DASHBOARD}"' in html


def test_format_duration():
    seconds = datetime.timedelta(seconds=1)
    assert [
        task_admin.format_duration(d)
        for d in (seconds * 0.35, seconds * 12.44, seconds * 185, seconds * 7800, seconds * 273600)
    ] == ["350 ms", "12.4 s", "3 min 5 s", "2 h 10 min", "3 d 4 h"]


def test_id_prefix_search_range_covers_exactly_the_prefix():
    low, high = task_admin._id_prefix_range("3F2A9C-1e")
    assert (low, high) == (
        uuid.UUID("3f2a9c1e-0000-0000-0000-000000000000"),
        uuid.UUID("3f2a9c1e-ffff-ffff-ffff-ffffffffffff"),
    )
    assert task_admin._id_prefix_range("email") is None
    assert task_admin._id_prefix_range("abc") is None  # too short to be an id prefix


def test_describe_outcome__tasks_deleted_meanwhile_are_counted():
    outcome = task_admin.ActionOutcome(changed=[_failed()], missing=1)
    assert task_admin.describe_outcome(task_admin.RETRY, outcome) == "1 task retried; 1 task no longer exists"


def test_worker_page__shows_one_worker_with_its_running_tasks(admin_client):
    _worker("alive-1", queues=["emails"], processed_count=7)
    _task(status=TaskStatus.RUNNING, worker_id="alive-1")
    response = admin_client.get(reverse("admin:tasks_worker_change", args=["alive-1"]))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<span class="tf-badge tf-status-alive">alive</span>' in html
    assert f'<a href="{CHANGELIST}?worker=alive-1">1 running</a>' in html
    assert "emails" in html
    assert 'name="_save"' not in html


def test_dashboard__warns_about_expired_leases(admin_client):
    _worker("alive-1")
    _task(status=TaskStatus.RUNNING, worker_id="gone", lease_expires_at=timezone.now() - datetime.timedelta(minutes=2))
    response = admin_client.get(DASHBOARD)
    assert response.context["dashboard"].expired_leases.value == 1
    html = response.content.decode()
    assert "1 running task holds an expired lease" in html
    assert f'href="{CHANGELIST}?condition=lease_expired"' in html
