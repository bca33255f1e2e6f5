"""The operator's console in headless Chromium against a live server and a real worker pool."""

import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.db import connection

from tasks.models import Task, TaskStatus
from tasks.services import task_enqueue
from tests.conftest import ROOT, wait_until

# transaction=True: the live server's thread and the worker pool's threads use their own
# connections and only see committed rows.
pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = ROOT / "test-artifacts"
PASSWORD = "correct horse battery staple"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture
def chromium_path() -> str:
    executable = shutil.which("chromium")
    if executable is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is not installed and CI=true: the browser tests must run")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    ARTIFACTS.mkdir(exist_ok=True)
    return executable


@contextlib.contextmanager
def chromium_page(executable: str) -> Iterator[Any]:
    """A page in headless Chromium.

    Playwright's sync API runs an event loop in this thread while the block lasts, so the
    test makes no ORM calls inside it (Django refuses them, and asgiref would hand out a
    connection per context that nobody closes): it reads the database before and after.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=BROWSER_ARGS)
        try:
            yield browser.new_page(viewport={"width": 1400, "height": 900})
        finally:
            browser.close()


@pytest.fixture
def worker(worker_pool) -> Iterator[Any]:
    """A worker pool in this process whose database sessions are gone by teardown's end."""
    pool = worker_pool()
    yield pool
    pool.stop()
    if connection.vendor == "postgresql":
        # The pool's threads close their connections a moment after stop() (the listener
        # checks once a second). When this is the session's last test, the test database
        # is dropped next, which PostgreSQL refuses while any other session remains.
        wait_until(lambda: _other_sessions() == 0, timeout=15)


def _other_sessions() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return int(cursor.fetchone()[0])


def _status(task: Task) -> str:
    return Task.objects.values_list("status", flat=True).get(id=task.id)


def _reload_until(page: Any, selector: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while page.locator(selector).inner_text().strip().lower() != text:
        if time.monotonic() > deadline:
            raise AssertionError(f"{selector} never showed {text!r}")
        time.sleep(0.2)
        page.reload()


def test_operator_retries_a_failed_task_until_it_is_done(chromium_path, live_server, worker):
    User.objects.create_superuser("operator", "operator@example.com", PASSWORD)
    # Fails on its first run; with one attempt allowed, that leaves it failed until retried.
    task = task_enqueue(
        type="flaky",
        payload={"key": f"browser-retry-{uuid.uuid4()}", "failures": 1},
        max_attempts=1,
    )
    wait_until(lambda: _status(task) == TaskStatus.FAILED)
    base = live_server.url

    with chromium_page(chromium_path) as page:
        page.goto(f"{base}/admin/")
        assert "/admin/login/" in page.url
        page.fill("#id_username", "operator")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("text=Operator's console")

        page.click("#content-main .app-tasks a:text-is('Tasks')")
        page.click("#changelist-filter a:text-is('Failed')")
        assert "status__exact=failed" in page.url
        assert "flaky failure 1 of 1" in page.locator("#result_list").inner_text()
        page.screenshot(path=ARTIFACTS / "admin-failed.png", full_page=True)

        page.check(f'input[name="_selected_action"][value="{task.id}"]')
        page.select_option('select[name="action"]', "retry_tasks")
        page.click('button[name="index"]')
        assert page.locator(".messagelist li.success").inner_text() == "1 task retried"
        page.screenshot(path=ARTIFACTS / "admin-retry.png", full_page=True)

        # The worker picks it up again; the list, unfiltered, shows it done.
        page.click("#changelist-filter-extra-actions a")  # "Clear all filters"
        row = f'#result_list tr:has(code.tf-id[title="{task.id}"]) .tf-badge'
        _reload_until(page, row, "done")
        page.screenshot(path=ARTIFACTS / "admin-done.png", full_page=True)

        # Its page shows the result, with the failed first attempt still on record.
        page.goto(f"{base}/admin/tasks/task/{task.id}/change/")
        assert page.locator(".field-status_display .tf-badge").inner_text().lower() == "done"
        assert "flaky failure 1 of 1" in page.locator(".tf-errors").inner_text()
        assert '"runs": 2' in page.locator(".field-result_display pre").inner_text()
        page.screenshot(path=ARTIFACTS / "admin-task.png", full_page=True)

        page.goto(f"{base}/admin/tasks/task/dashboard/")
        assert page.locator(".tf-tile-done .tf-tile-value").inner_text() == "1"
        assert page.locator(".tf-chart svg .tf-bar-done").count() == 1
        page.screenshot(path=ARTIFACTS / "admin-dashboard.png", full_page=True)

        page.goto(f"{base}/admin/tasks/worker/")
        assert page.locator("#result_list .tf-status-alive").count() == 1
        page.screenshot(path=ARTIFACTS / "admin-workers.png", full_page=True)

    task.refresh_from_db()
    assert (task.status, task.attempts, task.result) == (TaskStatus.DONE, 1, {"runs": 2})
    assert [e["message"] for e in task.errors] == ["flaky failure 1 of 1"]
