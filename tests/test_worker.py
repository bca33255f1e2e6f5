"""The worker pool in this process: real threads, real transactions, real handlers."""

import datetime
import uuid

import pytest
from django.core import mail
from django.utils import timezone

from tasks.handlers import PermanentError, current_task, registry
from tasks.models import Task, TaskStatus, Worker
from tasks.queue import ClaimedTask
from tasks.services import task_cancel, task_enqueue
from tasks.worker import WorkerPool
from tests.conftest import wait_until
from tests.handlers import side_effects

# Every test here needs transaction=True: the pool's threads use their own connections
# and only see committed rows.
pytestmark = pytest.mark.django_db(transaction=True)


def _status(task: Task) -> str:
    return Task.objects.values_list("status", flat=True).get(id=task.id)


def _wait_finished(*tasks: Task, timeout: float = 20.0) -> None:
    ids = [t.id for t in tasks]
    wait_until(
        lambda: not Task.objects.filter(id__in=ids, status__in=[TaskStatus.PENDING, TaskStatus.RUNNING]).exists(),
        timeout=timeout,
    )


@pytest.fixture
def temporary_handler():
    names = []

    def register(name, func, **kwargs):
        registry.register(name, func, **kwargs)
        names.append(name)

    yield register
    for name in names:
        registry.unregister(name)


def test_pool__runs_tasks_to_done_once_each(worker_pool):
    tasks = [task_enqueue(type="count", payload={"key": f"pool-done-{i}"}) for i in range(50)]
    worker_pool(concurrency=4)
    _wait_finished(*tasks)
    assert side_effects("pool-done-") == {f"pool-done-{i}": 1 for i in range(50)}
    rows = Task.objects.filter(id__in=[t.id for t in tasks])
    assert {(r.status, r.attempts, r.result) for r in rows} == {(TaskStatus.DONE, 1, 1)}
    assert all(r.finished_at >= r.started_at >= r.created_at for r in rows)


def test_pool__flaky_handler_succeeds_on_third_attempt_with_two_errors(worker_pool, fast_retries):
    task = task_enqueue(type="flaky", payload={"key": "pool-flaky-ok", "failures": 2}, max_attempts=3)
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts, task.result) == (TaskStatus.DONE, 3, {"runs": 3})
    assert [(e["attempt"], e["type"], e["message"]) for e in task.errors] == [
        (1, "RuntimeError", "flaky failure 1 of 2"),
        (2, "RuntimeError", "flaky failure 2 of 2"),
    ]
    assert all("Traceback" in e["traceback"] and "flaky" in e["traceback"] for e in task.errors)


def test_pool__retry_runs_when_its_backoff_ends_not_at_the_next_poll(worker_pool, fast_retries):
    task = task_enqueue(type="flaky", payload={"key": "pool-flaky-soon", "failures": 2}, max_attempts=3)
    worker_pool(poll_interval_seconds=60)  # the first claim polls at once; the retries must not wait for the next
    wait_until(lambda: _status(task) == TaskStatus.DONE, timeout=5)
    task.refresh_from_db()
    assert task.attempts == 3


def test_pool__always_failing_handler_ends_failed_after_max_attempts(worker_pool, fast_retries):
    task = task_enqueue(type="flaky", payload={"key": "pool-flaky-never", "failures": 99}, max_attempts=4)
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts, len(task.errors)) == (TaskStatus.FAILED, 4, 4)
    assert task.error == "RuntimeError: flaky failure 4 of 99"
    assert side_effects("pool-flaky-never") == {"pool-flaky-never": 4}


def test_pool__permanent_error_fails_without_retry(worker_pool, temporary_handler):
    def refuse(**_):
        raise PermanentError("bad account")

    temporary_handler("refuse", refuse)
    task = task_enqueue(type="refuse", max_attempts=5)
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts, task.error) == (TaskStatus.FAILED, 1, "PermanentError: bad account")


def test_pool__payload_that_does_not_fit_the_handler_fails_permanently(worker_pool):
    task = task_enqueue(type="count", payload={"wrong": 1}, max_attempts=3)
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert "payload does not fit handler 'count'" in task.error


def test_pool__handler_removed_after_enqueue_fails_naming_known_types(worker_pool, temporary_handler):
    temporary_handler("vanishing", lambda: None)
    task = task_enqueue(type="vanishing")
    registry.unregister("vanishing")
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert "no handler for type 'vanishing'" in task.error
    assert "noop" in task.error


def test_pool__result_json_cannot_hold_fails_the_task(worker_pool, temporary_handler):
    temporary_handler("returns_object", lambda: object())
    task = task_enqueue(type="returns_object", max_attempts=3)
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 1)
    assert "JSON cannot hold" in task.error


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "nul\x00char", {"k": ["\x00"]}, "lone \ud800"])
def test_pool__result_the_database_cannot_store_fails_the_task_alone(worker_pool, temporary_handler, bad):
    temporary_handler("returns_bad", lambda: bad)
    bad_task = task_enqueue(type="returns_bad", max_attempts=3)
    good = [task_enqueue(type="noop") for _ in range(3)]
    worker_pool()
    _wait_finished(bad_task, *good)
    bad_task.refresh_from_db()
    assert (bad_task.status, bad_task.attempts) == (TaskStatus.FAILED, 1)
    assert "JSON cannot hold" in bad_task.error
    assert {_status(t) for t in good} == {TaskStatus.DONE}


@pytest.mark.parametrize(
    ("message", "recorded"),
    [("bad\x00byte", "bad\\x00byte"), ("bad \udcff name", "bad \\udcff name")],
    ids=["nul", "lone-surrogate"],
)
def test_pool__error_message_the_database_cannot_store_is_recorded_escaped(
    worker_pool, temporary_handler, message, recorded
):
    def fails():
        raise PermanentError(message)

    temporary_handler("fails_oddly", fails)
    task = task_enqueue(type="fails_oddly")
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.error) == (TaskStatus.FAILED, f"PermanentError: {recorded}")


def test_pool__sys_exit_in_a_handler_fails_the_task_and_the_thread_carries_on(worker_pool, temporary_handler):
    def exits():
        raise SystemExit(3)

    temporary_handler("exits", exits)
    task = task_enqueue(type="exits", max_attempts=3)
    worker_pool(concurrency=1)
    _wait_finished(task)
    later = task_enqueue(type="noop")
    _wait_finished(later)
    task.refresh_from_db()
    assert (task.status, task.attempts, task.error) == (TaskStatus.FAILED, 1, "SystemExit: 3")
    assert _status(later) == TaskStatus.DONE


def test_pool__big_integers_survive_payload_and_result_exactly(worker_pool, temporary_handler):
    temporary_handler("double", lambda *, n: {"n": n * 2})
    task = task_enqueue(type="double", payload={"n": 123456789012345678901234567890})
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert task.result == {"n": 246913578024691357802469135780}


def test_pool__handler_max_attempts_is_the_default_for_its_tasks(worker_pool, temporary_handler, fast_retries):
    def always_fails():
        raise RuntimeError("nope")

    temporary_handler("twice", always_fails, max_attempts=2)
    task = task_enqueue(type="twice")
    assert task.max_attempts == 2
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.attempts) == (TaskStatus.FAILED, 2)


def test_pool__handler_sees_its_task_and_observes_cancel(worker_pool):
    task = task_enqueue(type="sleep", payload={"seconds": 30})
    worker_pool()
    wait_until(lambda: _status(task) == TaskStatus.RUNNING)
    assert task_cancel(task_id=task.id).cancel_requested
    _wait_finished(task, timeout=5)
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert task.error == "PermanentError: cancelled while sleeping"


def test_pool__current_task_context(worker_pool, temporary_handler):
    def introspect():
        context = current_task()
        return {"id": context.task_id, "attempt": context.attempt, "queue": context.queue}

    temporary_handler("introspect", introspect)
    task = task_enqueue(type="introspect", queue="special")
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert task.result == {"id": str(task.id), "attempt": 1, "queue": "special"}
    with pytest.raises(LookupError):
        current_task()


def test_pool__delayed_task_waits_for_run_after(worker_pool):
    task = task_enqueue(
        type="count", payload={"key": "pool-delayed"}, run_after=timezone.now() + datetime.timedelta(seconds=1)
    )
    worker_pool()
    wait_until(lambda: _status(task) == TaskStatus.DONE, timeout=10)
    task.refresh_from_db()
    assert task.started_at >= task.run_after


def test_pool__only_takes_its_queues(worker_pool):
    mine = task_enqueue(type="count", payload={"key": "pool-q-mine"}, queue="mine")
    theirs = task_enqueue(type="count", payload={"key": "pool-q-theirs"}, queue="theirs")
    worker_pool(queues=["mine"])
    _wait_finished(mine)
    assert _status(theirs) == TaskStatus.PENDING


def test_pool__email_handler_sends_through_django_mail(worker_pool):
    task = task_enqueue(type="email", payload={"to": "user@example.com", "subject": "Hello", "body": "Welcome"})
    worker_pool()
    _wait_finished(task)
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.DONE, {"sent": 1})
    [message] = mail.outbox
    assert (message.to, message.subject, message.body) == (["user@example.com"], "Hello", "Welcome")


def test_pool__registers_itself_and_marks_stopped(worker_pool):
    tasks = [task_enqueue(type="noop") for _ in range(5)]
    pool = worker_pool(concurrency=3, queues=["default"])
    _wait_finished(*tasks)
    row = Worker.objects.get(id=pool.worker_id)
    assert (row.concurrency, row.queues, row.stopped_at) == (3, ["default"], None)
    pool.stop()
    wait_until(lambda: Worker.objects.get(id=pool.worker_id).stopped_at is not None)
    row.refresh_from_db()
    assert row.processed_count == 5


def test_pool__stop_hands_back_claimed_but_unstarted_tasks(worker_pool):
    blockers = [task_enqueue(type="block", payload={"key": f"pool-stop-{i}", "seconds": 0.5}) for i in range(2)]
    waiting = [task_enqueue(type="noop", priority=-1) for _ in range(5)]
    pool = worker_pool(concurrency=2, prefetch=10)
    # Both threads busy with the blockers, and no-op tasks claimed ahead behind them.
    wait_until(lambda: Task.objects.filter(status=TaskStatus.RUNNING).count() >= 3)
    pool.stop()
    wait_until(lambda: Worker.objects.get(id=pool.worker_id).stopped_at is not None)
    assert {_status(t) for t in blockers} == {TaskStatus.DONE}
    assert set(Task.objects.filter(id__in=[t.id for t in waiting]).values_list("status", "attempts")) == {
        (TaskStatus.PENDING, 0)
    }


def test_pool__an_older_attempt_finishing_keeps_the_newer_attempts_lease():
    # After a lost lease a worker may claim its own task again while the older attempt still
    # runs; recording (and fencing) the older one must not stop renewing the newer one's lease.
    pool = WorkerPool(concurrency=1)
    first = ClaimedTask(id=uuid.uuid4(), type="noop", payload={}, attempt=1, max_attempts=3, queue="default")
    second = ClaimedTask(id=first.id, type="noop", payload={}, attempt=2, max_attempts=3, queue="default")
    pool._held[first.id] = second
    pool._forget(first)
    assert pool._held == {first.id: second}
    pool._forget(second)
    assert pool._held == {}
