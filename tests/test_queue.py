"""The claim, completion, fencing and lease statements of tasks/queue.py, without a pool."""

import datetime
import threading

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from tasks import queue
from tasks.models import Task, TaskStatus
from tasks.services import TaskSpec, task_enqueue, task_enqueue_many

WORKER_A, WORKER_B = "worker-a", "worker-b"


def _claim(worker_id: str = WORKER_A, limit: int = 10, **kwargs) -> list[queue.ClaimedTask]:
    return queue.claim_ready_tasks(worker_id=worker_id, limit=limit, lease_seconds=30, **kwargs)


def _entry(task: queue.ClaimedTask, worker_id: str = WORKER_A) -> dict[str, object]:
    return queue.error_entry(
        attempt=task.attempt, exc_type="RuntimeError", message="boom", traceback="Traceback...", worker_id=worker_id
    )


@pytest.mark.django_db
def test_claim_ready_tasks__marks_running_with_lease_and_counts_the_attempt():
    task = task_enqueue(type="noop", payload={"a": 1})
    [claimed] = _claim()
    assert (claimed.id, claimed.type, claimed.payload, claimed.attempt) == (task.id, "noop", {"a": 1}, 1)
    task.refresh_from_db()
    assert task.status == TaskStatus.RUNNING
    assert task.worker_id == WORKER_A
    assert task.attempts == 1
    assert task.started_at is not None
    assert task.lease_expires_at > timezone.now() + datetime.timedelta(seconds=25)
    assert _claim() == []


@pytest.mark.django_db
def test_claim_ready_tasks__priority_then_age_and_limit():
    low = task_enqueue(type="noop", priority=-5)
    high = task_enqueue(type="noop", priority=50)
    middle_old = task_enqueue(type="noop")
    middle_new = task_enqueue(type="noop")
    assert [t.id for t in _claim(limit=3)] == [high.id, middle_old.id, middle_new.id]
    assert [t.id for t in _claim(limit=3)] == [low.id]


@pytest.mark.django_db
def test_claim_ready_tasks__skips_future_run_after_and_other_queues():
    task_enqueue(type="noop", run_after=timezone.now() + datetime.timedelta(minutes=5))
    task_enqueue(type="noop", queue="emails")
    other = task_enqueue(type="noop", queue="reports")
    assert [t.id for t in _claim(queues=["reports", "billing"])] == [other.id]
    assert _claim(queues=["billing"]) == []
    assert len(_claim()) == 1  # the emails task; the delayed one stays pending


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # a second connection must see committed rows
def test_claim_ready_tasks__skips_rows_locked_by_another_transaction():
    locked, free = task_enqueue(type="noop", priority=10), task_enqueue(type="noop")
    settings_dict = connection.settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"], port=settings_dict["PORT"], user=settings_dict["USER"], dbname=settings_dict["NAME"]
    ) as other:
        other.execute("SELECT id FROM tasks_task WHERE id = %s FOR UPDATE", [locked.id])
        # The claim neither waits for the lock nor takes the locked row.
        assert [t.id for t in _claim()] == [free.id]
    assert [t.id for t in _claim()] == [locked.id]


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # claims run on separate threads, each its own connection
def test_claim_ready_tasks__concurrent_claims_never_share_a_task():
    ids = {task_enqueue(type="noop").id for _ in range(300)}
    claimed: list[list[queue.ClaimedTask]] = [[] for _ in range(6)]

    def claim_all(index: int) -> None:
        try:
            while batch := _claim(worker_id=f"w{index}", limit=7):
                claimed[index].extend(batch)
        finally:
            connection.close()

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    all_claimed = [t.id for batch in claimed for t in batch]
    assert len(all_claimed) == len(set(all_claimed)) == 300
    assert set(all_claimed) == ids


@pytest.mark.django_db
def test_complete_tasks__records_done_with_result():
    task_enqueue(type="noop")
    [claimed] = _claim()
    done = queue.complete_tasks(
        worker_id=WORKER_A, successes=[queue.Success(task=claimed, result_json='{"n": 2}', duration_ms=1.0)]
    )
    assert done == {claimed.id}
    task = Task.objects.get(id=claimed.id)
    assert (task.status, task.result, task.lease_expires_at) == (TaskStatus.DONE, {"n": 2}, None)
    assert task.finished_at is not None


@pytest.mark.django_db
def test_complete_tasks__fenced_after_the_lease_was_taken_over():
    task_enqueue(type="noop")
    [stale] = _claim(WORKER_A)
    # A's lease expires and B claims the task again.
    Task.objects.filter(id=stale.id).update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=1))
    [recovered] = queue.recover_expired_leases()
    assert recovered.status == TaskStatus.PENDING
    [fresh] = _claim(WORKER_B)
    assert fresh.attempt == 2

    stale_done = queue.complete_tasks(
        worker_id=WORKER_A, successes=[queue.Success(task=stale, result_json='"stale"', duration_ms=1.0)]
    )
    assert stale_done == set()
    assert queue.record_failure(worker_id=WORKER_A, task=stale, entry=_entry(stale), permanent=True) is None
    task = Task.objects.get(id=stale.id)
    assert (task.status, task.worker_id, task.result) == (TaskStatus.RUNNING, WORKER_B, None)

    assert queue.complete_tasks(
        worker_id=WORKER_B, successes=[queue.Success(task=fresh, result_json='"fresh"', duration_ms=1.0)]
    ) == {fresh.id}
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.DONE, "fresh")


@pytest.mark.django_db
def test_complete_tasks__same_worker_but_older_attempt_is_fenced():
    task_enqueue(type="noop")
    [first] = _claim(WORKER_A)
    Task.objects.filter(id=first.id).update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=1))
    queue.recover_expired_leases()
    [second] = _claim(WORKER_A)
    assert (
        queue.complete_tasks(
            worker_id=WORKER_A, successes=[queue.Success(task=first, result_json=None, duration_ms=1.0)]
        )
        == set()
    )
    assert Task.objects.get(id=first.id).status == TaskStatus.RUNNING
    assert second.attempt == 2


@pytest.mark.django_db
def test_record_failure__retries_with_backoff_then_fails(settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "RETRY_BACKOFF_BASE_SECONDS": 10.0}
    task_enqueue(type="noop", max_attempts=2)
    [first] = _claim()
    before = timezone.now()
    assert (
        queue.record_failure(worker_id=WORKER_A, task=first, entry=_entry(first), permanent=False).status == "pending"
    )
    task = Task.objects.get(id=first.id)
    # Attempt 1 waits between half and all of base * 2**0 = 10 s.
    assert before + datetime.timedelta(seconds=5) <= task.run_after <= timezone.now() + datetime.timedelta(seconds=10)
    assert task.error == "RuntimeError: boom"

    Task.objects.filter(id=first.id).update(run_after=timezone.now())
    [second] = _claim()
    assert (
        queue.record_failure(worker_id=WORKER_A, task=second, entry=_entry(second), permanent=False).status == "failed"
    )
    task.refresh_from_db()
    assert task.status == TaskStatus.FAILED
    assert [e["attempt"] for e in task.errors] == [1, 2]
    assert task.finished_at is not None


@pytest.mark.django_db
def test_record_failure__permanent_error_fails_at_once():
    task_enqueue(type="noop", max_attempts=5)
    [claimed] = _claim()
    assert (
        queue.record_failure(worker_id=WORKER_A, task=claimed, entry=_entry(claimed), permanent=True).status == "failed"
    )
    assert Task.objects.get(id=claimed.id).attempts == 1


def test_retry_delay__grows_exponentially_with_jitter_and_a_cap(settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "RETRY_BACKOFF_BASE_SECONDS": 2.0, "RETRY_BACKOFF_MAX_SECONDS": 60.0}
    for attempt, ceiling in [(1, 2), (2, 4), (3, 8), (10, 60)]:
        delays = {queue.retry_delay(attempt).total_seconds() for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(delays) > 1  # jittered


@pytest.mark.django_db
def test_recover_expired_leases__out_of_attempts_ends_failed():
    doomed = task_enqueue(type="noop", max_attempts=1)
    live = task_enqueue(type="noop")
    assert len(_claim(limit=2)) == 2
    Task.objects.filter(id=doomed.id).update(lease_expires_at=timezone.now() - datetime.timedelta(seconds=1))
    [recovered] = queue.recover_expired_leases()
    assert recovered.id == doomed.id
    assert recovered.status == TaskStatus.FAILED
    assert recovered.errors[-1]["type"] == "LeaseExpired"
    assert Task.objects.get(id=live.id).status == TaskStatus.RUNNING


@pytest.mark.django_db
def test_extend_leases__only_the_holders_listed_tasks():
    task_enqueue(type="noop")
    task_enqueue(type="noop")
    first, second = _claim(limit=2)
    past = timezone.now() - datetime.timedelta(seconds=1)
    Task.objects.update(lease_expires_at=past)
    assert queue.extend_leases(worker_id=WORKER_B, task_ids=[first.id], lease_seconds=30) == 0
    assert queue.extend_leases(worker_id=WORKER_A, task_ids=[first.id], lease_seconds=30) == 1
    assert Task.objects.get(id=first.id).lease_expires_at > timezone.now()
    assert Task.objects.get(id=second.id).lease_expires_at == past


@pytest.mark.django_db
def test_release_tasks__back_to_pending_without_burning_the_attempt():
    task_enqueue(type="noop")
    [claimed] = _claim()
    assert queue.release_tasks(worker_id=WORKER_B, task_ids=[claimed.id]) == 0
    assert queue.release_tasks(worker_id=WORKER_A, task_ids=[claimed.id]) == 1
    task = Task.objects.get(id=claimed.id)
    assert (task.status, task.attempts, task.lease_expires_at) == (TaskStatus.PENDING, 0, None)


@pytest.mark.django_db
def test_claim_ready_tasks__a_batch_is_claimed_in_its_order():
    specs = [TaskSpec(type="noop", payload={"n": n}) for n in range(30)]
    task_enqueue_many(specs=specs)
    assert [t.payload["n"] for t in _claim(limit=30)] == list(range(30))


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)  # NOTIFY is delivered on commit, to another connection
def test_insert_trigger__notifies_each_queue_once_per_statement():
    settings_dict = connection.settings_dict
    with psycopg.connect(
        host=settings_dict["HOST"],
        port=settings_dict["PORT"],
        user=settings_dict["USER"],
        dbname=settings_dict["NAME"],
        autocommit=True,
    ) as listener:
        listener.execute(f"LISTEN {queue.NOTIFY_CHANNEL}")
        task_enqueue_many(specs=[TaskSpec(type="noop", queue=q) for q in ["a", "b", "a", "a"]])
        with connection.cursor() as cursor:  # any INSERT, not only the service's
            cursor.execute(
                "INSERT INTO tasks_task (id, type, payload, status, queue, priority, attempts, max_attempts,"
                " run_after, created_at, updated_at, error, errors, cancel_requested)"
                " VALUES (gen_random_uuid(), 'noop', '{}', 'pending', 'raw', 0, 0, 3, now(), now(), now(), '', '[]',"
                " false)"
            )
        received = [n.payload for n in listener.notifies(timeout=1.0)]
    assert sorted(received) == ["a", "b", "raw"]


@pytest.mark.django_db
def test_release_tasks__a_cancel_requested_meanwhile_ends_cancelled():
    task_enqueue(type="noop")
    [claimed] = _claim()
    Task.objects.filter(id=claimed.id).update(cancel_requested=True)
    assert queue.release_tasks(worker_id=WORKER_A, task_ids=[claimed.id]) == 1
    task = Task.objects.get(id=claimed.id)
    assert (task.status, task.attempts) == (TaskStatus.CANCELLED, 0)
    assert task.finished_at is not None
