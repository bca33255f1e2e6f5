"""The worker pool behind `manage.py runworkers`: one process, a dispatcher and N handler threads.

The dispatcher (the thread that calls `run()`) claims up to the free capacity (threads plus
a prefetch buffer) in one statement and hands task ids and payloads to the handler
threads; a recorder thread writes their outcomes in batches, on its own connection, so
claiming and recording overlap. A heartbeat thread extends leases, registers the process
and recovers tasks whose worker vanished; on PostgreSQL a listener thread wakes the
dispatcher on NOTIFY.
"""

import collections
import contextlib
import json
import math
import os
import queue
import secrets
import signal
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from django.conf import settings
from django.db import OperationalError, close_old_connections, connection
from django.db.utils import InterfaceError
from django.utils import timezone

from tasks import queue as task_queue
from tasks.handlers import PermanentError, TaskContext, _current_task, registry
from tasks.models import Task, TaskStatus, Worker
from tasks.queue import ClaimedTask, Success

log = structlog.get_logger("tasks.worker")

DB_BACKOFF_INITIAL_SECONDS = 0.1
DB_BACKOFF_MAX_SECONDS = 5.0
LISTEN_TIMEOUT_SECONDS = 0.25  # how often the idle listener checks whether to stop
THREAD_EXIT_WAIT_SECONDS = LISTEN_TIMEOUT_SECONDS + 1.0
SIGNAL_CHECK_SECONDS = 0.05  # how soon a SIGTERM or SIGINT is acted on
RECOVERY_BATCHES_PER_BEAT = 10  # of queue.LEASE_RECOVERY_BATCH tasks: a lost host's backlog in one beat
# Outcomes are written in batches: the recorder lets a few more arrive before it writes,
# unless this many are already waiting.
RECORD_LINGER_SECONDS = 0.002
DEFAULT_PREFETCH_PER_THREAD = 20  # the most tasks claimed ahead, per thread (--prefetch overrides)
# Claim ahead only about this much work per thread: no-op tasks are claimed by the
# hundred, while tasks of a second are not claimed ahead at all, so other worker
# processes can take them.
PREFETCH_HORIZON_SECONDS = 0.05
RECORD_BATCH_TARGET = 50
# What a lost or restarting database raises; anything else (a bad statement) is a bug and
# stops the worker rather than looping.
DB_OUTAGE_ERRORS = (OperationalError, InterfaceError)


@dataclass(frozen=True, slots=True)
class Failure:
    task: ClaimedTask
    exc_type: str
    message: str
    traceback: str
    permanent: bool
    duration_ms: float


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class WorkerPool:
    def __init__(
        self,
        *,
        concurrency: int,
        queues: Sequence[str] = (),
        grace_seconds: float = 30.0,
        prefetch: int | None = None,
        lease_seconds: float | None = None,
        poll_interval_seconds: float | None = None,
    ) -> None:
        config = settings.TASKFLOW
        self.worker_id = new_worker_id()
        self.concurrency = concurrency
        self.queues = tuple(queues)
        self.grace_seconds = grace_seconds
        # Claiming ahead of the free threads amortises one claim over many short tasks; see
        # _prefetch for how far ahead.
        self.max_prefetch = DEFAULT_PREFETCH_PER_THREAD * concurrency if prefetch is None else prefetch
        self._mean_task_seconds: float | None = None
        self.lease_seconds = lease_seconds or config["LEASE_SECONDS"]
        self.heartbeat_seconds = self.lease_seconds / 3
        self.poll_interval_seconds = poll_interval_seconds or config["POLL_INTERVAL_SECONDS"]
        self.log = log.bind(worker_id=self.worker_id)

        self._todo: queue.SimpleQueue[ClaimedTask | None] = queue.SimpleQueue()
        self._outcomes: collections.deque[Success | Failure] = collections.deque()
        # Claimed and not yet recorded, by id: the tasks whose leases the heartbeat renews.
        self._held: dict[uuid.UUID, ClaimedTask] = {}
        # By (id, attempt): after a lost lease this worker may claim the same task again
        # while its earlier attempt is still running.
        self._waiting: set[tuple[uuid.UUID, int]] = set()  # held, not yet picked up by a handler thread
        self._started: set[tuple[uuid.UUID, int]] = set()  # held, handler running now
        self._closed = False  # set at the end of shutdown: outcomes are no longer taken
        self._held_lock = threading.Lock()
        self._wake = threading.Event()  # the dispatcher: capacity freed, NOTIFY, or stop
        self._outcome_ready = threading.Event()  # the recorder
        self._stop_recording = threading.Event()
        self._notified = False
        # When the earliest retry this worker scheduled becomes due (time.monotonic()).
        self._retry_due = math.inf
        self._stopping = threading.Event()
        self._stop_now = threading.Event()
        self._finished = threading.Event()
        self._signals: collections.deque[int] = collections.deque()
        self._threads: list[threading.Thread] = []
        self.processed_count = 0
        self.failed_count = 0

    # Lifecycle -------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self, *, immediately: bool = False) -> None:
        """Stop claiming; finish running tasks within the grace period (or not at all)."""
        self._stopping.set()
        if immediately:
            self._stop_now.set()
        self._wake.set()

    def signal_received(self, signum: int) -> None:
        """Safe to call from a signal handler: the first signal drains, a second stops at once.

        A handler runs on the main thread between any two bytecodes, possibly while that
        thread holds the log's or an Event's lock; so it only appends here (no lock), and the
        signal-watcher thread logs and stops.
        """
        self._signals.append(signum)

    def _watch_signals(self) -> None:
        while not self._finished.wait(SIGNAL_CHECK_SECONDS):
            while self._signals:
                signum = self._signals.popleft()
                immediately = self._stopping.is_set()
                self.log.info("signal_received", signal=signal.Signals(signum).name, immediately=immediately)
                self.stop(immediately=immediately)

    def run(self) -> None:
        self._spawn(self._watch_signals, "taskflow-signals")
        try:
            # Waits for the database if it is not up yet; one signal is enough to give up.
            self._with_db_retry(self._register, "register", until=self._stopping)
        except DB_OUTAGE_ERRORS:
            self._finished.set()
            self.log.warning("worker_stopped", processed=0, failed=0, released_running=0, registered=False)
            return
        self.log.info(
            "worker_started",
            concurrency=self.concurrency,
            queues=list(self.queues) or "all",
            max_prefetch=self.max_prefetch,
            lease_seconds=self.lease_seconds,
            database=connection.vendor,
        )
        for index in range(self.concurrency):
            self._spawn(self._handler_loop, f"taskflow-handler-{index}")
        recorder = self._spawn(self._record_loop, "taskflow-recorder")
        self._spawn(self._heartbeat_loop, "taskflow-heartbeat")
        if connection.vendor == "postgresql":
            self._spawn(self._listen_loop, "taskflow-listener")
        try:
            try:
                self._dispatch_loop()
            except Exception:
                self.log.exception("worker_crashed")
                self._shut_down(recorder)  # hand back what this process holds before exiting
                raise
            self._shut_down(recorder)
        finally:
            self._stopping.set()
            self._stop_now.set()
            self._finished.set()
            for _ in range(self.concurrency):
                self._todo.put(None)
            _drop_connection()
            # Let the threads close their connections; one still stuck in a handler past the
            # grace period is a daemon and ends with the process.
            deadline = time.monotonic() + THREAD_EXIT_WAIT_SECONDS
            for thread in self._threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        # Daemon threads: a handler stuck past the grace period must not keep the process alive.
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)
        return thread

    def _register(self) -> None:
        Worker.objects.update_or_create(
            id=self.worker_id,
            defaults={
                "hostname": socket.gethostname(),
                "pid": os.getpid(),
                "queues": list(self.queues),
                "concurrency": self.concurrency,
                "started_at": timezone.now(),
                "last_heartbeat_at": timezone.now(),
            },
        )

    # Dispatcher ------------------------------------------------------------------------

    def _prefetch(self) -> int:
        """How many tasks to hold beyond the busy threads, from how long tasks take lately."""
        mean = self._mean_task_seconds
        if mean is None:
            return min(self.max_prefetch, self.concurrency)
        return min(self.max_prefetch, int(self.concurrency * PREFETCH_HORIZON_SECONDS / max(mean, 1e-6)))

    def _claim_size(self) -> int:
        """How many tasks to claim now; 0 while too few slots are free to be worth a statement.

        With a backlog, claim once half the prefetch buffer is free rather than one task per
        statement; the threads still have the other half to work through meanwhile.
        """
        prefetch = self._prefetch()
        with self._held_lock:
            # Outcomes waiting for the recorder do not take capacity.
            free = self.concurrency + prefetch - len(self._waiting) - len(self._started)
        return free if free >= max(1, prefetch // 2) else 0

    def _dispatch_loop(self) -> None:
        next_poll = 0.0
        backoff = DB_BACKOFF_INITIAL_SECONDS
        while not self._stopping.is_set():
            self._wake.clear()
            if self._retry_due <= time.monotonic():
                self._retry_due = math.inf
                next_poll = 0.0
            free = self._claim_size()
            if free > 0 and (self._notified or time.monotonic() >= next_poll):
                self._notified = False
                try:
                    claimed = self._claim(free)
                except DB_OUTAGE_ERRORS as exc:
                    self._database_unavailable(exc, backoff, self._stopping)
                    backoff = min(backoff * 2, DB_BACKOFF_MAX_SECONDS)
                    continue
                backoff = DB_BACKOFF_INITIAL_SECONDS
                if len(claimed) < free:
                    # Drained: wait for a NOTIFY or the next poll rather than asking again.
                    next_poll = time.monotonic() + self.poll_interval_seconds
            wake_at = min(next_poll, self._retry_due)
            self._wake.wait(timeout=max(0.0, wake_at - time.monotonic()) or self.poll_interval_seconds)

    def _claim(self, limit: int) -> list[ClaimedTask]:
        claimed = task_queue.claim_ready_tasks(
            worker_id=self.worker_id, limit=limit, queues=self.queues, lease_seconds=self.lease_seconds
        )
        with self._held_lock:
            for task in claimed:
                self._held[task.id] = task
                self._waiting.add(_key(task))
        for task in claimed:
            self._todo.put(task)
        return claimed

    # Recorder ----------------------------------------------------------------------------

    def _record_loop(self) -> None:
        """Write outcomes in batches until shutdown has asked for the last ones."""
        backoff = DB_BACKOFF_INITIAL_SECONDS
        try:
            while not (self._stop_recording.is_set() and not self._outcomes):
                self._outcome_ready.wait(timeout=0.5)
                self._outcome_ready.clear()
                if len(self._outcomes) < RECORD_BATCH_TARGET and not self._stop_recording.is_set():
                    time.sleep(RECORD_LINGER_SECONDS)
                try:
                    self._flush_outcomes()
                except DB_OUTAGE_ERRORS as exc:
                    if self._stop_now.is_set():
                        self.log.error("outcomes_not_recorded", count=len(self._outcomes), error=str(exc)[:500])
                        return  # their leases expire and another worker runs them again
                    self._database_unavailable(exc, backoff, self._stop_now)
                    backoff = min(backoff * 2, DB_BACKOFF_MAX_SECONDS)
                    self._outcome_ready.set()
                    continue
                backoff = DB_BACKOFF_INITIAL_SECONDS
        finally:
            _drop_connection()

    def _flush_outcomes(self) -> None:
        """Record finished tasks: successes in one statement, then failures one by one."""
        batch: list[Success | Failure] = []
        while self._outcomes:
            batch.append(self._outcomes.popleft())
        successes = [o for o in batch if isinstance(o, Success)]
        failures = [o for o in batch if isinstance(o, Failure)]
        unrecorded: list[Success | Failure] = [*successes, *failures]
        try:
            self._record_successes(successes)
            for index, failure in enumerate(failures):
                unrecorded = list(failures[index:])
                self._record_failure(failure)
            unrecorded = []
        except DB_OUTAGE_ERRORS:
            # Not committed: keep them for the next try.
            self._outcomes.extendleft(reversed(unrecorded))
            raise
        except Exception:
            # A value the database refuses, or a bug: one bad outcome must not hold up the rest.
            self.log.exception("outcome_batch_failed", count=len(unrecorded))
            for index, outcome in enumerate(unrecorded):
                try:
                    if isinstance(outcome, Success):
                        self._record_successes([outcome])
                    else:
                        self._record_failure(outcome)
                except DB_OUTAGE_ERRORS:
                    self._outcomes.extendleft(reversed(unrecorded[index:]))
                    raise
                except Exception:
                    # Its lease is no longer renewed: it expires, and the task runs again.
                    self.log.exception("outcome_not_recorded", task_id=str(outcome.task.id), type=outcome.task.type)
                    self._forget(outcome.task)

    def _record_successes(self, successes: list[Success]) -> None:
        if not successes:
            return
        completed = task_queue.complete_tasks(worker_id=self.worker_id, successes=successes)
        for success in successes:
            self._forget(success.task)
            task = success.task
            if task.id in completed:
                self.processed_count += 1
                self.log.info(
                    "task_done",
                    task_id=str(task.id),
                    type=task.type,
                    queue=task.queue,
                    attempt=task.attempt,
                    duration_ms=success.duration_ms,
                )
            else:
                self._log_fenced(task)

    def _record_failure(self, failure: Failure) -> None:
        task = failure.task
        entry = task_queue.error_entry(
            attempt=task.attempt,
            exc_type=failure.exc_type,
            message=failure.message,
            traceback=failure.traceback,
            worker_id=self.worker_id,
        )
        row = task_queue.record_failure(
            worker_id=self.worker_id,
            task=task,
            entry=entry,
            permanent=failure.permanent,
        )
        self._forget(task)
        if row is None:
            self._log_fenced(task)
            return
        status = row.status
        if status == TaskStatus.PENDING:
            # Claim it again when its backoff ends, not at the next poll, which may be later.
            due = time.monotonic() + (row.run_after - timezone.now()).total_seconds()
            self._retry_due = min(self._retry_due, due)
            self._wake.set()
        self.failed_count += 1
        self.log.warning(
            "task_failed" if status == TaskStatus.FAILED else "task_retry_scheduled",
            task_id=str(task.id),
            type=task.type,
            queue=task.queue,
            attempt=task.attempt,
            max_attempts=task.max_attempts,
            duration_ms=failure.duration_ms,
            error=f"{failure.exc_type}: {failure.message}",
        )

    def _log_fenced(self, task: ClaimedTask) -> None:
        self.log.warning(
            "task_completion_fenced",
            task_id=str(task.id),
            type=task.type,
            attempt=task.attempt,
            reason="lease lost: another worker or an operator changed the task",
        )

    def _forget(self, task: ClaimedTask) -> None:
        with self._held_lock:
            if self._held.get(task.id) is task:  # not a later attempt of the same task
                del self._held[task.id]

    def _database_unavailable(self, exc: BaseException, backoff: float, interrupt: threading.Event) -> None:
        self.log.warning("database_unavailable", error=str(exc).strip()[:500], retry_in_seconds=backoff)
        _drop_connection()
        interrupt.wait(backoff)

    def _with_db_retry(self, action: Callable[[], object], what: str, *, until: threading.Event | None = None) -> None:
        """Run `action`, retrying through database outages; give up (re-raise) once `until` is set."""
        until = until or self._stop_now
        backoff = DB_BACKOFF_INITIAL_SECONDS
        while True:
            try:
                action()
                return
            except DB_OUTAGE_ERRORS as exc:
                if until.is_set():
                    raise
                self.log.warning("database_unavailable", during=what, error=str(exc).strip()[:500])
                _drop_connection()
                until.wait(backoff)
                backoff = min(backoff * 2, DB_BACKOFF_MAX_SECONDS)

    # Handler threads -------------------------------------------------------------------

    def _handler_loop(self) -> None:
        try:
            self._run_handlers()
        finally:
            _drop_connection()

    def _run_handlers(self) -> None:
        while (task := self._todo.get()) is not None:
            with self._held_lock:
                if self._stopping.is_set() or _key(task) not in self._waiting:
                    continue  # not started: _shut_down hands it back
                self._waiting.discard(_key(task))
                self._started.add(_key(task))
            self.log.info("task_started", task_id=str(task.id), type=task.type, queue=task.queue, attempt=task.attempt)
            outcome = self._run_handler(task)
            seconds, mean = outcome.duration_ms / 1000, self._mean_task_seconds
            self._mean_task_seconds = seconds if mean is None else mean * 0.9 + seconds * 0.1  # for _prefetch
            # A handler that used the ORM leaves this thread a connection: drop it if broken or old.
            close_old_connections()
            with self._held_lock:
                self._started.discard(_key(task))
                if self._closed:
                    continue  # past the grace period: _shut_down has handed the task back
                self._outcomes.append(outcome)
            self._outcome_ready.set()
            if self._claim_size():
                self._wake.set()

    def _run_handler(self, task: ClaimedTask) -> Success | Failure:
        token = _current_task.set(
            TaskContext(
                task_id=str(task.id),
                type=task.type,
                attempt=task.attempt,
                max_attempts=task.max_attempts,
                queue=task.queue,
            )
        )
        started = time.perf_counter()
        try:
            handler = registry.get(task.type)
            if handler is None:
                raise PermanentError(f"no handler for type {task.type!r}; known: {', '.join(registry.names())}")
            result = handler.call(task.payload)
            try:
                result_json = _encode_result(result)
            except (TypeError, ValueError) as exc:
                raise PermanentError(f"handler returned a value JSON cannot hold: {exc}") from None
            return Success(task=task, result_json=result_json, duration_ms=_ms_since(started))
        except BaseException as exc:  # noqa: BLE001 - any handler error is the task's outcome
            # SystemExit too (sys.exit() in a handler): escaping, it would silently end this
            # thread and leave the task running, its lease renewed for ever.
            return Failure(
                task=task,
                exc_type=type(exc).__name__,
                message=str(exc),
                traceback=traceback.format_exc(),
                permanent=isinstance(exc, PermanentError) or not isinstance(exc, Exception),
                duration_ms=_ms_since(started),
            )
        finally:
            _current_task.reset(token)

    # Heartbeat and recovery ------------------------------------------------------------

    def _heartbeat_loop(self) -> None:
        try:
            self._beat_until_stopped()
        finally:
            _drop_connection()

    def _beat_until_stopped(self) -> None:
        while not self._stop_now.wait(self.heartbeat_seconds):
            try:
                self._heartbeat()
            except DB_OUTAGE_ERRORS as exc:
                self.log.warning("heartbeat_failed", error=str(exc).strip()[:500])
                _drop_connection()
            except Exception:
                # Never let the heartbeat die: without it this worker's leases lapse while
                # its tasks still run, and other workers would start them a second time.
                self.log.exception("heartbeat_failed")
            finally:
                close_old_connections()

    def _heartbeat(self) -> None:
        with self._held_lock:
            held = list(self._held)
        task_queue.extend_leases(worker_id=self.worker_id, task_ids=held, lease_seconds=self.lease_seconds)
        Worker.objects.filter(id=self.worker_id).update(
            last_heartbeat_at=timezone.now(),
            processed_count=self.processed_count,
            failed_count=self.failed_count,
        )
        recovered: list[Task] = []
        for _ in range(RECOVERY_BATCHES_PER_BEAT):
            batch = task_queue.recover_expired_leases()
            recovered.extend(batch)
            if len(batch) < task_queue.LEASE_RECOVERY_BATCH:
                break
        for task in recovered:
            self.log.warning(
                "task_lease_expired",
                task_id=str(task.id),
                type=task.type,
                queue=task.queue,
                attempt=task.attempts,
                lost_worker_id=task.errors[-1]["worker_id"],
                status=task.status,
            )
            if task.status == TaskStatus.PENDING:
                self._notified = True
                self._wake.set()

    # Wake-ups (PostgreSQL) ---------------------------------------------------------------

    def _listen_loop(self) -> None:
        conninfo = _conninfo()
        backoff = DB_BACKOFF_INITIAL_SECONDS
        while not self._stop_now.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as listener:
                    listener.execute(f"LISTEN {task_queue.NOTIFY_CHANNEL}")
                    backoff = DB_BACKOFF_INITIAL_SECONDS
                    # A wake-up may have been missed while (re)connecting.
                    self._notified = True
                    self._wake.set()
                    while not self._stop_now.is_set():
                        for notify in listener.notifies(timeout=LISTEN_TIMEOUT_SECONDS):
                            if not self.queues or notify.payload in self.queues:
                                self._notified = True
                                self._wake.set()
            except psycopg.Error as exc:
                self.log.warning(
                    "listener_disconnected",
                    error=str(exc).strip()[:500],
                    retry_in_seconds=backoff,
                )
                self._stop_now.wait(backoff)
                backoff = min(backoff * 2, DB_BACKOFF_MAX_SECONDS)

    # Shutdown ----------------------------------------------------------------------------

    def _shut_down(self, recorder: threading.Thread) -> None:
        """Let running tasks finish within the grace period, then hand back what is left."""
        self._stopping.set()  # also on the crash path: no handler may start a task from here on
        self.log.info("worker_stopping", grace_seconds=self.grace_seconds, in_flight=len(self._held))
        deadline = time.monotonic() + self.grace_seconds
        with self._held_lock:
            never_started = [task for task in self._held.values() if _key(task) in self._waiting]
        self._release(never_started, started=False)
        while not self._stop_now.is_set() and time.monotonic() < deadline:
            with self._held_lock:
                if not self._started:
                    break
            self._wake.wait(timeout=min(0.1, max(0.0, deadline - time.monotonic())))
            self._wake.clear()
        self._stop_now.set()
        self._stop_recording.set()
        self._outcome_ready.set()
        recorder.join(timeout=DB_BACKOFF_MAX_SECONDS * 2)
        with self._held_lock:
            # From here on a handler that finishes drops its outcome: its task is handed back below.
            self._closed = True
        # Outcomes that arrived after the recorder's last look.
        with contextlib.suppress(*DB_OUTAGE_ERRORS):
            self._flush_outcomes()
        with self._held_lock:
            still_held = list(self._held.values())  # running past the grace period, or not recorded
        released = self._release(still_held, started=True)
        with contextlib.suppress(*DB_OUTAGE_ERRORS):  # the database is away: the row shows a stale heartbeat
            Worker.objects.filter(id=self.worker_id).update(
                stopped_at=timezone.now(),
                last_heartbeat_at=timezone.now(),
                processed_count=self.processed_count,
                failed_count=self.failed_count,
            )
        self.log.info(
            "worker_stopped",
            processed=self.processed_count,
            failed=self.failed_count,
            released_running=released,
        )

    def _release(self, tasks: list[ClaimedTask], *, started: bool) -> int:
        """Hand tasks back to `pending`, attempt uncounted; fenced, so recorded ones stay as they are."""
        if not tasks:
            return 0
        ids = [task.id for task in tasks]
        count = 0

        def release() -> None:
            nonlocal count
            count = task_queue.release_tasks(worker_id=self.worker_id, task_ids=ids)

        with contextlib.suppress(*DB_OUTAGE_ERRORS):  # if the database is away, the leases expire instead
            self._with_db_retry(release, "release")
        for task in tasks:
            self._forget(task)
            with self._held_lock:
                self._waiting.discard(_key(task))
            self.log.info("task_released", task_id=str(task.id), started=started)
        return count


def _encode_result(result: Any) -> str | None:
    """The result as JSON text that both databases store: no NaN or infinities, no NUL characters."""
    if result is None:
        return None
    text = json.dumps(result, allow_nan=False, ensure_ascii=False)
    if "\\u0000" in text:
        raise ValueError("NUL characters cannot be stored")
    text.encode("utf-8")  # UnicodeEncodeError (a ValueError) for lone surrogates
    return text


def _key(task: ClaimedTask) -> tuple[uuid.UUID, int]:
    return (task.id, task.attempt)


def _drop_connection() -> None:
    """Forget this thread's broken connection; Django opens a new one on next use."""
    with contextlib.suppress(Exception):
        connection.close()


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def _conninfo() -> str:
    """A libpq connection string for the listener, from Django's own database settings."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)
    params.pop("context", None)
    params.pop("prepare_threshold", None)
    params.pop("server_side_binding", None)
    return psycopg.conninfo.make_conninfo(**{k: v for k, v in params.items() if v not in (None, "")})
