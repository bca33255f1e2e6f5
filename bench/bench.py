"""TaskFlow's benchmark: every figure beside the bare-SQL limit of this machine, in one run.

`make bench` runs it against the local PostgreSQL (DB_DSN, default the `taskflow_bench`
database, created if missing and migrated). It measures, in order:

1. the raw-SQL limit: a bare psycopg loop, 5 threads, claiming one row with SKIP LOCKED and
   completing it (one transaction each), the same claiming and completing 100 at a time,
   and single-row / multi-row INSERT rates;
2. enqueue over HTTP: a real gunicorn, single-task and batch POST /tasks;
3. drain: 5,000 `noop` tasks through a real `manage.py runworkers --workers 5`;
4. enqueue-to-start latency on an idle pool (bare LISTEN/NOTIFY claim, the enqueue service,
   and HTTP), from the rows' created_at and started_at.

This script empties tasks_task and tasks_worker of the database it runs on: it refuses a
database whose name does not contain "bench" unless --force is given. Subprocess output
(JSON log lines) goes to var/bench/*.log: writing it is part of the real cost.
"""

import argparse
import atexit
import collections
import contextlib
import datetime as dt
import http.client
import itertools
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "var" / "bench"
DEFAULT_DSN = "postgres://postgres@127.0.0.1:5432/taskflow_bench"

DRAIN_POLL_SECONDS = 0.01  # how often the drain's progress is counted
ADJACENT_BARE_ROWS = 3000  # rows of the short bare loop run right before each drain
DRAIN_STALL_SECONDS = 15.0  # a drain with no progress for this long is given up
STOP_TIMEOUT_SECONDS = 20.0  # SIGTERM, then SIGKILL after this long
SERVER_START_TIMEOUT_SECONDS = 30.0
BARE_NOTIFY_CHANNEL = "taskflow_bench_bare"
TEMPLATE_QUEUE = "bench"

UTC = dt.UTC


# Options ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Options:
    tasks: int
    workers: int
    prefetches: tuple[int | None, ...]  # None: runworkers' own default
    bare_threads: int
    bare_tasks: int
    bare_batch_tasks: int
    bare_batch_size: int
    http_requests: int
    http_batch_sizes: tuple[int, ...]
    http_batch_tasks: int
    clients: int
    latency_samples: int
    latency_spacing_ms: float
    sections: frozenset[str]
    json_path: Path | None
    profile: bool
    py_spy: str | None
    force: bool


SECTIONS = ("bare", "http", "drain", "latency")


def parse_args(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description="TaskFlow throughput and latency on the local PostgreSQL, beside the bare-SQL limit.",
    )
    parser.add_argument("--quick", action="store_true", help="smaller sizes, one drain run (about 40 s)")
    parser.add_argument("--tasks", type=int, default=5000, help="noop tasks per drain run (5000)")
    parser.add_argument("--workers", type=int, default=5, help="runworkers --workers and bare-loop threads (5)")
    parser.add_argument(
        "--prefetch",
        default=None,
        help="comma-separated runworkers --prefetch values, 'default' for its own (default,0,100)",
    )
    parser.add_argument("--bare-tasks", type=int, default=None, help="rows for the one-row loop (10000)")
    parser.add_argument("--bare-batch-tasks", type=int, default=None, help="rows for the batched loop (50000)")
    parser.add_argument("--bare-batch-size", type=int, default=100, help="rows per batched claim/insert (100)")
    parser.add_argument("--http-requests", type=int, default=None, help="single-task POSTs (2000)")
    parser.add_argument("--http-batch-sizes", default="100,500", help="tasks per batch POST (100,500)")
    parser.add_argument("--http-batch-tasks", type=int, default=None, help="tasks per batch size (10000)")
    parser.add_argument("--clients", type=int, default=8, help="HTTP client threads (8)")
    parser.add_argument("--latency-samples", type=int, default=None, help="tasks per latency path (200)")
    parser.add_argument("--latency-spacing-ms", type=float, default=25.0, help="gap between samples (25)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record the first drain run with py-spy (var/bench/drain-profile.*)",
    )
    parser.add_argument("--py-spy", default=None, help="py-spy executable (default: on PATH)")
    parser.add_argument("--force", action="store_true", help="run on a database not named *bench*")
    args = parser.parse_args(argv)

    quick = args.quick
    sections = frozenset(s.strip() for s in args.sections.split(",") if s.strip())
    if unknown := sections - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    prefetch_text = args.prefetch or ("default" if quick else "default,0,100")
    try:
        prefetches = tuple(None if p.strip() == "default" else int(p) for p in prefetch_text.split(","))
        batch_sizes = tuple(int(s) for s in args.http_batch_sizes.split(",") if s.strip())
    except ValueError as exc:
        parser.error(str(exc))
    return Options(
        tasks=args.tasks,
        workers=args.workers,
        prefetches=prefetches,
        bare_threads=args.workers,
        bare_tasks=args.bare_tasks or (3000 if quick else 10000),
        bare_batch_tasks=args.bare_batch_tasks or (20000 if quick else 50000),
        bare_batch_size=args.bare_batch_size,
        http_requests=args.http_requests or (500 if quick else 2000),
        http_batch_sizes=batch_sizes,
        http_batch_tasks=args.http_batch_tasks or (3000 if quick else 10000),
        clients=args.clients,
        latency_samples=args.latency_samples or (60 if quick else 200),
        latency_spacing_ms=args.latency_spacing_ms,
        sections=sections,
        json_path=args.json,
        profile=args.profile,
        py_spy=args.py_spy or shutil.which("py-spy"),
        force=args.force,
    )


# Results ---------------------------------------------------------------------------------


@dataclass
class Figure:
    section: str
    name: str
    value: float  # tasks/s, or ms for latencies
    unit: str
    text: str  # the value as printed
    ratio: str = ""  # beside the bare-SQL limit
    detail: str = ""


@dataclass
class Report:
    header: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    claim_one_rate: float | None = None  # the bare one-row loop: what every rate is divided by

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        line = f"  {figure.section:8} {figure.name}: {figure.text}"
        if figure.text == "FAILED":
            line += f": {figure.detail}"
        if figure.ratio:
            line += f"  ({figure.ratio})"
        progress(line)

    def versus_claim_loop(self, rate: float) -> str:
        if not self.claim_one_rate:
            return ""
        return f"{rate / self.claim_one_rate:.2f}x bare 1-row loop"

    def render(self) -> str:
        rows = [("section", "figure", "value", "vs bare SQL (same run)")]
        rows += [(f.section, f.name, f.text, f.ratio) for f in self.figures]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [*self.header, ""]
        for index, row in enumerate(rows):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].rjust(widths[2]), row[3]]
            lines.append("  ".join(cells).rstrip())
            if index == 0:
                lines.append("  ".join("-" * w for w in widths))
        details = [f"  {f.section}/{f.name}: {f.detail}" for f in self.figures if f.detail]
        if details:
            lines += ["", "details:", *details]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines)


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def rate_text(rate: float) -> str:
    return f"{rate:,.0f} tasks/s"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


# Subprocesses ----------------------------------------------------------------------------


class Children:
    """The subprocesses this script started; every one is stopped on exit, Ctrl-C included."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: Sequence[str], *, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with log_path.open("wb") as log:
            # A session of its own: Ctrl-C reaches only this script, which stops them in order.
            proc = subprocess.Popen(
                list(cmd),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                progress(f"  pid {proc.pid} ignored SIGTERM for {timeout:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own group: gunicorn's workers too
                proc.wait()
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(list(self._procs)):
            self.stop(proc, timeout=10.0)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Database --------------------------------------------------------------------------------


def ensure_database(dsn: str) -> None:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    name = str(params["dbname"])
    admin = psycopg.conninfo.make_conninfo(dsn, dbname="postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            progress(f"created database {name}")


def migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--no-input"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"manage.py migrate failed:\n{done.stdout}\n{done.stderr}")


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


class RowTemplate:
    """Rows to insert, copied from one that TaskFlow's own enqueue service wrote.

    Copying a real row keeps the seeds valid when the model gains a column; only the
    identity, queue and timestamps change from row to row.
    """

    def __init__(self, columns: Sequence[str], values: Sequence[Any]) -> None:
        self.columns = list(columns)
        self.values = [Jsonb(v) if isinstance(v, dict | list) else v for v in values]
        self._index = {name: i for i, name in enumerate(self.columns)}

    def insert_sql(self, rows: int) -> sql.Composed:
        one = sql.SQL("({})").format(sql.SQL(", ").join([sql.Placeholder()] * len(self.columns)))
        return sql.SQL("INSERT INTO tasks_task ({}) VALUES {}").format(
            sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            sql.SQL(", ").join([one] * rows),
        )

    def params(self, rows: int, *, queue: str, at: dt.datetime) -> list[Any]:
        flat: list[Any] = []
        for offset in range(rows):
            row = list(self.values)
            row[self._index["id"]] = uuid.uuid4()
            row[self._index["queue"]] = queue
            row[self._index["status"]] = "pending"
            row[self._index["attempts"]] = 0
            # Distinct creation times keep the claim order (FIFO within a priority) defined.
            row[self._index["created_at"]] = at + dt.timedelta(microseconds=offset)
            row[self._index["updated_at"]] = at
            row[self._index["run_after"]] = at
            flat += row
        return flat

    def insert(self, conn: psycopg.Connection[Any], count: int, *, queue: str, chunk: int = 500) -> None:
        at = dt.datetime.now(UTC)
        with conn.transaction(), conn.cursor() as cur:
            for start in range(0, count, chunk):
                rows = min(chunk, count - start)
                cur.execute(self.insert_sql(rows), self.params(rows, queue=queue, at=at))


def make_template(dsn: str) -> RowTemplate:
    from tasks import services  # Django is set up by now

    with connect(dsn) as conn:
        reset_tables(conn)
        services.task_enqueue(type="noop", queue=TEMPLATE_QUEUE)
        with conn.cursor() as cur:
            cur.execute("SELECT * FROM tasks_task")
            columns = [d.name for d in cur.description or ()]
            row = cur.fetchone()
        reset_tables(conn)
    assert row is not None
    return RowTemplate(columns, row)


def reset_tables(conn: psycopg.Connection[Any]) -> None:
    # A fresh heap and fresh indexes for every measurement, so runs are comparable.
    conn.execute("TRUNCATE tasks_task, tasks_worker")


def analyze(conn: psycopg.Connection[Any]) -> None:
    # Autovacuum would have analysed a table in service; do it now, the same for every run.
    conn.execute("ANALYZE tasks_task")


def live_workers(conn: psycopg.Connection[Any]) -> list[tuple[str, int]]:
    rows = conn.execute(
        "SELECT id, pid FROM tasks_worker WHERE stopped_at IS NULL AND last_heartbeat_at > now() - interval '1 minute'"
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


# 1. The bare-SQL limit ---------------------------------------------------------------------

# The claim of DESIGN.md, writing the same columns as the worker's, one row at a time.
BARE_CLAIM_ONE = """
UPDATE tasks_task
SET status = 'running', attempts = attempts + 1, worker_id = %(worker)s,
    lease_expires_at = now() + interval '30 seconds', started_at = now(), updated_at = now()
WHERE id = (
    SELECT id FROM tasks_task
    WHERE status = 'pending' AND run_after <= now()
    ORDER BY priority DESC, run_after, created_at
    FOR UPDATE SKIP LOCKED LIMIT 1
)
RETURNING id
"""

BARE_COMPLETE_ONE = """
UPDATE tasks_task
SET status = 'done', finished_at = now(), updated_at = now(), lease_expires_at = NULL
WHERE id = %(id)s AND worker_id = %(worker)s AND status = 'running'
"""

BARE_CLAIM_MANY = """
UPDATE tasks_task
SET status = 'running', attempts = attempts + 1, worker_id = %(worker)s,
    lease_expires_at = now() + interval '30 seconds', started_at = %(now)s, updated_at = %(now)s
WHERE id IN (
    SELECT id FROM tasks_task
    WHERE status = 'pending' AND run_after <= %(now)s
    ORDER BY priority DESC, run_after, created_at
    FOR UPDATE SKIP LOCKED LIMIT %(limit)s
)
RETURNING id
"""

BARE_COMPLETE_MANY = """
UPDATE tasks_task
SET status = 'done', finished_at = %(now)s, updated_at = %(now)s, lease_expires_at = NULL
WHERE id = ANY(%(ids)s) AND worker_id = %(worker)s AND status = 'running'
"""


def run_threads(dsn: str, count: int, body: Callable[[psycopg.Connection[Any], int], int]) -> tuple[int, float]:
    """Run `body(conn, index)` on `count` threads with a connection each; (items done, seconds)."""
    conns = [connect(dsn) for _ in range(count)]
    done = [0] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count + 1)

    def target(index: int) -> None:
        barrier.wait()
        try:
            done[index] = body(conns[index], index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    try:
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            while thread.is_alive():
                thread.join(0.1)  # stays interruptible by Ctrl-C
        elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            conn.close()
    if errors:
        raise errors[0]
    return sum(done), elapsed


def bench_bare(opts: Options, dsn: str, template: RowTemplate, report: Report) -> None:
    threads = opts.bare_threads
    with connect(dsn) as conn:
        # Single-row INSERTs, autocommit (one transaction each): seeds the one-row loop.
        reset_tables(conn)
        insert_one = template.insert_sql(1)
        plans = _split(opts.bare_tasks, threads)
        at = dt.datetime.now(UTC)
        params = [[template.params(1, queue=TEMPLATE_QUEUE, at=at) for _ in range(n)] for n in plans]

        def insert_rows(c: psycopg.Connection[Any], index: int) -> int:
            for row in params[index]:
                c.execute(insert_one, row)
            return len(params[index])

        inserted, seconds = run_threads(dsn, threads, insert_rows)
        single_insert = inserted / seconds

        analyze(conn)
        claimed, seconds = run_threads(dsn, threads, _claim_one_loop)
        report.claim_one_rate = claimed / seconds
        report.add(
            Figure(
                "limit",
                f"bare SQL claim 1 + complete 1, {threads} threads",
                report.claim_one_rate,
                "tasks/s",
                rate_text(report.claim_one_rate),
                "1.00x (the reference)",
                f"{claimed:,} rows, {seconds:.2f} s; each claim and each completion its own transaction",
            )
        )
        _check_all_done(conn, opts.bare_tasks, "bare 1-row loop")

        # Multi-row INSERTs of bare_batch_size rows: seeds the batched loop.
        reset_tables(conn)
        size = opts.bare_batch_size
        statements = _split(math.ceil(opts.bare_batch_tasks / size), threads)
        insert_many = template.insert_sql(size)
        batch_params = [[template.params(size, queue=TEMPLATE_QUEUE, at=at) for _ in range(n)] for n in statements]

        def insert_batches(c: psycopg.Connection[Any], index: int) -> int:
            for rows in batch_params[index]:
                c.execute(insert_many, rows)
            return len(batch_params[index]) * size

        inserted_many, seconds_many = run_threads(dsn, threads, insert_batches)
        analyze(conn)

        def claim_batches(c: psycopg.Connection[Any], index: int) -> int:
            return _claim_many_loop(c, index, size)

        claimed, seconds = run_threads(dsn, threads, claim_batches)
        batch_rate = claimed / seconds
        report.add(
            Figure(
                "limit",
                f"bare SQL claim {size} + complete {size}, {threads} threads",
                batch_rate,
                "tasks/s",
                rate_text(batch_rate),
                report.versus_claim_loop(batch_rate),
                f"{claimed:,} rows, {seconds:.2f} s",
            )
        )
        _check_all_done(conn, sum(statements) * size, "bare batched loop")
        report.add(
            Figure(
                "limit",
                f"bare SQL single-row INSERT, {threads} threads",
                single_insert,
                "tasks/s",
                rate_text(single_insert),
                report.versus_claim_loop(single_insert),
                f"{inserted:,} rows, autocommit",
            )
        )
        many_rate = inserted_many / seconds_many
        report.add(
            Figure(
                "limit",
                f"bare SQL {size}-row INSERT, {threads} threads",
                many_rate,
                "tasks/s",
                rate_text(many_rate),
                report.versus_claim_loop(many_rate),
                f"{inserted_many:,} rows, {seconds_many:.2f} s",
            )
        )
        reset_tables(conn)


def bare_claim_one_rate(dsn: str, template: RowTemplate, threads: int, rows: int) -> float:
    """The bare one-row loop alone, on `rows` freshly inserted rows: tasks/s."""
    with connect(dsn) as conn:
        reset_tables(conn)
        template.insert(conn, rows, queue=TEMPLATE_QUEUE)
        analyze(conn)
        claimed, seconds = run_threads(dsn, threads, _claim_one_loop)
        reset_tables(conn)
    return claimed / seconds


def _split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _claim_one_loop(conn: psycopg.Connection[Any], index: int) -> int:
    worker = f"bench-bare-{index}"
    done = 0
    with conn.cursor() as cur:
        while True:
            cur.execute(BARE_CLAIM_ONE, {"worker": worker})
            row = cur.fetchone()
            if row is None:
                return done
            cur.execute(BARE_COMPLETE_ONE, {"id": row[0], "worker": worker})
            done += 1


def _claim_many_loop(conn: psycopg.Connection[Any], index: int, size: int) -> int:
    worker = f"bench-bare-{index}"
    done = 0
    with conn.cursor() as cur:
        while True:
            now = dt.datetime.now(UTC)
            cur.execute(BARE_CLAIM_MANY, {"worker": worker, "now": now, "limit": size})
            ids = [row[0] for row in cur.fetchall()]
            if not ids:
                return done
            cur.execute(BARE_COMPLETE_MANY, {"ids": ids, "worker": worker, "now": dt.datetime.now(UTC)})
            done += len(ids)


def _check_all_done(conn: psycopg.Connection[Any], expected: int, what: str) -> None:
    row = conn.execute("SELECT count(*) FILTER (WHERE status = 'done'), count(*) FROM tasks_task").fetchone()
    assert row is not None
    if row[0] != expected or row[1] != expected:
        progress(f"  WARNING {what}: {row[0]} of {row[1]} rows done, expected {expected}")


# 2. Enqueue over HTTP ------------------------------------------------------------------------


class Server:
    """A real gunicorn serving the API on the bench database."""

    def __init__(self, children: Children, env: dict[str, str]) -> None:
        self.port = free_port()
        self.log_path = OUT_DIR / "gunicorn.log"
        server_env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
        self.workers = server_env.get("WEB_CONCURRENCY", "2")
        self.threads = server_env.get("GUNICORN_THREADS", "4")
        self.children = children
        self.proc = children.start(
            [str(Path(sys.executable).parent / "gunicorn"), "-c", "gunicorn.conf.py", "taskflow_project.wsgi"],
            log_path=self.log_path,
            env=server_env,
        )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.proc.returncode}:\n{log_tail(self.log_path)}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    conn.close()
                    return
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not healthy after {SERVER_START_TIMEOUT_SECONDS:.0f} s")

    def client(self) -> "Client":
        return Client(self.port)

    def stop(self) -> None:
        self.children.stop(self.proc)


class Client:
    """One keep-alive HTTP connection; reconnects when the server closes it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def post_tasks(self, body: bytes) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                self.conn.request("POST", "/tasks", body, {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                return response.status, response.read()
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


@dataclass
class HttpRun:
    requests: int
    tasks: int
    seconds: float
    request_ms: list[float]
    errors: list[str]


def post_many(server: Server, clients: int, requests: int, body: bytes, tasks_per_request: int) -> HttpRun:
    counter = itertools.count()  # next() on a count is atomic under the GIL
    timings: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    conns = [server.client() for _ in range(clients)]
    for conn in conns:  # warm: open the connection, reach a Django worker thread
        conn.post_tasks(body)
    barrier = threading.Barrier(clients + 1)

    def target(index: int) -> None:
        conn = conns[index]
        barrier.wait()
        while next(counter) < requests:
            started = time.perf_counter()
            try:
                status, text = conn.post_tasks(body)
            except (OSError, http.client.HTTPException) as exc:
                errors.append(repr(exc))
                continue
            timings[index].append((time.perf_counter() - started) * 1000)
            if status != 201:
                errors.append(f"{status}: {text[:200]!r}")

    threads = [threading.Thread(target=target, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        while thread.is_alive():
            thread.join(0.1)
    seconds = time.perf_counter() - started
    for conn in conns:
        conn.close()
    flat = [t for per_thread in timings for t in per_thread]
    return HttpRun(requests, requests * tasks_per_request, seconds, flat, errors)


def bench_http(opts: Options, dsn: str, server: Server, report: Report) -> None:
    with connect(dsn) as conn:
        reset_tables(conn)
    one = json.dumps({"type": "noop", "payload": {}}).encode()
    run = post_many(server, opts.clients, opts.http_requests, one, 1)
    _add_http(report, run, f"HTTP POST /tasks, 1 task each, {opts.clients} clients")
    for size in opts.http_batch_sizes:
        body = json.dumps([{"type": "noop", "payload": {}}] * size).encode()
        requests = max(1, opts.http_batch_tasks // size)
        run = post_many(server, min(opts.clients, requests), requests, body, size)
        _add_http(report, run, f"HTTP POST /tasks, arrays of {size}, {min(opts.clients, requests)} clients")
    with connect(dsn) as conn:
        reset_tables(conn)


def _add_http(report: Report, run: HttpRun, name: str) -> None:
    rate = run.tasks / run.seconds
    detail = (
        f"{run.requests:,} requests, {run.tasks:,} tasks, {run.seconds:.2f} s; request p50"
        f" {percentile(run.request_ms, 50):.1f} ms, p99 {percentile(run.request_ms, 99):.1f} ms"
        if run.request_ms
        else "no request succeeded"
    )
    if run.errors:
        detail += f"; {len(run.errors)} ERRORS, first: {run.errors[0]}"
    report.add(Figure("enqueue", name, rate, "tasks/s", rate_text(rate), report.versus_claim_loop(rate), detail))


# 3. Drain ----------------------------------------------------------------------------------


def runworkers_cmd(workers: int, prefetch: int | None) -> list[str]:
    cmd = [sys.executable, "manage.py", "runworkers", "--workers", str(workers)]
    if prefetch is not None:
        cmd += ["--prefetch", str(prefetch)]
    return cmd


@dataclass
class Profiler:
    """py-spy attached to a running worker: wall-clock stacks of every thread, idle ones included."""

    proc: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def attach(cls, py_spy: str, pid: int, name: str) -> "Profiler":
        output = OUT_DIR / f"{name}.txt"
        cmd = [py_spy, "record", "--pid", str(pid), "--rate", "250", "--threads", "--idle", "--nonblocking"]
        proc = subprocess.Popen(
            [*cmd, "--format", "raw", "--output", str(output)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        return cls(proc, output)

    def finish(self) -> None:
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# Frames worth naming in a summary: the project's own code, and where time goes outside it.
PROFILE_FRAMES = ("(tasks/", "(taskflow_project/", "Connection.wait", "Connection.commit", "structlog/_output")


def summarize_profile(path: Path, top: int = 8) -> list[str]:
    """Per thread (handler threads merged), the share of wall time under the most used frames."""
    per_thread: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    totals: collections.Counter[str] = collections.Counter()
    for line in _iter_lines(path):
        stack, _, count_text = line.decode(errors="replace").rstrip().rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        thread = re.sub(r"-\d+$", "-*", thread)
        thread = re.sub(r"^thread \(\d+\)$", "MainThread", thread)  # sampled before it had a name
        if not any("WorkerPool" in f or "_loop" in f for f in frames):
            continue  # start-up (imports, migrations check) is not the drain
        count = int(count_text)
        totals[thread] += count
        for frame in dict.fromkeys(frames[1:]):  # once per stack, however deep the recursion
            if any(marker in frame for marker in PROFILE_FRAMES):
                per_thread[thread][frame] += count
    lines = [f"profile of the first drain ({path.relative_to(ROOT)}), share of each thread's wall time:"]
    for thread, total in totals.most_common():
        lines.append(f"  {thread} ({total:,} samples):")
        for frame, count in per_thread[thread].most_common(top):
            lines.append(f"    {count / total:6.1%}  {frame}")
    return lines


def bench_drain(
    opts: Options, dsn: str, template: RowTemplate, children: Children, env: dict[str, str], report: Report
) -> None:
    for run_index, prefetch in enumerate(opts.prefetches):
        label = "default" if prefetch is None else str(prefetch)
        name = f"runworkers --workers {opts.workers} --prefetch {label}, {opts.tasks:,} noop"
        profile = opts.profile and run_index == 0
        try:
            figure = drain_once(
                opts, dsn, template, children, env, prefetch=prefetch, name=name, profile=profile, notes=report.notes
            )
        except Exception as exc:
            figure = Figure("drain", name, math.nan, "tasks/s", "FAILED", detail=str(exc))
        figure.ratio = report.versus_claim_loop(figure.value) if not math.isnan(figure.value) else ""
        report.add(figure)


def drain_once(
    opts: Options,
    dsn: str,
    template: RowTemplate,
    children: Children,
    env: dict[str, str],
    *,
    prefetch: int | None,
    name: str,
    profile: bool,
    notes: list[str],
) -> Figure:
    """Seed `opts.tasks` noop tasks, start runworkers, and time it until every one is finished."""
    label = "default" if prefetch is None else str(prefetch)
    log_path = OUT_DIR / f"drain-prefetch-{label}.log"
    # The machine's load moves from minute to minute: a short bare loop right before the
    # drain gives a reference taken under the same conditions.
    adjacent = bare_claim_one_rate(dsn, template, opts.bare_threads, ADJACENT_BARE_ROWS)
    with connect(dsn) as conn:
        reset_tables(conn)
        template.insert(conn, opts.tasks, queue=TEMPLATE_QUEUE)
        analyze(conn)
        spawned_wall = dt.datetime.now(UTC)
        spawned = time.perf_counter()
        proc = children.start(runworkers_cmd(opts.workers, prefetch), log_path=log_path, env=env)
        profiler = Profiler.attach(opts.py_spy, proc.pid, "drain-profile") if profile and opts.py_spy else None
        try:
            drained, usage = _wait_drained(conn, proc, opts.tasks, log_path)
        finally:
            all_done = time.perf_counter()
            if profiler is not None:
                profiler.finish()
            returncode = children.stop(proc)
        # A claim stamps all its rows with one started_at, a batched completion one finished_at:
        # counting distinct stamps counts the statements, and so the batch sizes.
        stats = conn.execute(
            """
            SELECT min(started_at), max(finished_at), count(*) FILTER (WHERE status = 'done'),
                   count(*) FILTER (WHERE attempts <> 1), count(*) FILTER (WHERE status = 'failed'),
                   count(DISTINCT started_at), count(DISTINCT finished_at)
            FROM tasks_task
            """
        ).fetchone()
        assert stats is not None
    first_start, last_finish, done, retried, failed, claims, completions = stats
    log_lines = sum(1 for _ in _iter_lines(log_path))
    if not done or first_start is None or last_finish is None:
        raise RuntimeError(f"no task done; runworkers log:\n{log_tail(log_path)}")
    steady = (last_finish - first_start).total_seconds()
    steady_rate = done / steady
    wall_rate = done / (all_done - spawned)
    startup = (first_start - spawned_wall).total_seconds()
    detail = (
        f"{done:,}/{opts.tasks:,} done in {steady:.2f} s from the first claim to the last completion"
        f" ({all_done - spawned:.2f} s from spawn: {wall_rate:,.0f} tasks/s; first claim"
        f" {startup:.2f} s after spawn); {claims:,} claim statements (mean {done / max(claims, 1):.1f} rows),"
        f" {completions:,} completion statements (mean {done / max(completions, 1):.1f} rows); {log_lines:,} log lines"
    )
    if usage is not None:
        detail += f"; {usage}"
    if retried or failed or done != opts.tasks or not drained:
        detail += f"; WARNING not all done once: attempts<>1: {retried}, failed: {failed}"
    if returncode != 0:
        detail += f"; runworkers exited {returncode}"
    detail += f"; bare 1-row loop just before: {adjacent:,.0f} tasks/s, so {steady_rate / adjacent:.2f}x that"
    if profiler is not None:
        notes.extend(summarize_profile(profiler.output))
    return Figure("drain", name, steady_rate, "tasks/s", rate_text(steady_rate), "", detail)


def _wait_drained(
    conn: psycopg.Connection[Any], proc: subprocess.Popen[bytes], expected: int, log_path: Path
) -> tuple[bool, str | None]:
    """Poll until `expected` tasks are finished; (False when progress stalled, CPU use while draining)."""
    finished, last_progress = 0, time.perf_counter()
    first: CpuSample | None = None
    finished_at_first = 0
    backends: list[int] = []
    while time.perf_counter() - last_progress < DRAIN_STALL_SECONDS:
        row = conn.execute("SELECT count(*) FROM tasks_task WHERE status IN ('done', 'failed')").fetchone()
        assert row is not None
        if row[0] and first is None:
            backends = _backend_pids(conn)
            first, finished_at_first = CpuSample.take(proc.pid, backends), row[0]
        if row[0] >= expected:
            last = CpuSample.take(proc.pid, backends)
            return True, _cpu_usage(first, last, row[0] - finished_at_first)
        if row[0] > finished:
            finished, last_progress = row[0], time.perf_counter()
        if proc.poll() is not None:
            raise RuntimeError(f"runworkers exited with {proc.returncode}:\n{log_tail(log_path)}")
        time.sleep(DRAIN_POLL_SECONDS)
    progress(f"  WARNING drain stalled for {DRAIN_STALL_SECONDS:.0f} s: {finished} of {expected} finished")
    return False, None


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds from /proc (Linux): the worker's, its PostgreSQL backends', the whole machine's."""

    at: float  # perf_counter seconds
    worker: float  # CPU seconds used by the worker process so far
    postgres: float  # CPU seconds used so far by the backends sampled (see take)
    machine_busy: float  # CPU seconds, all cores
    machine_total: float  # CPU seconds, all cores

    @classmethod
    def take(cls, pid: int, backend_pids: Sequence[int]) -> "CpuSample | None":
        try:
            cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            worker = _process_cpu(pid)
        except OSError:
            return None
        backends = 0.0
        for backend in backend_pids:
            with contextlib.suppress(OSError):  # a backend may have exited
                backends += _process_cpu(backend)
        ticks = [int(v) for v in cpu]
        idle = ticks[3] + ticks[4]  # idle + iowait
        tick = os.sysconf("SC_CLK_TCK")
        return cls(time.perf_counter(), worker, backends, (sum(ticks) - idle) / tick, sum(ticks) / tick)


def _process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _backend_pids(conn: psycopg.Connection[Any]) -> list[int]:
    """The server processes doing the worker's work: its backends (not this poller's) and the WAL writer."""
    rows = conn.execute(
        """
        SELECT pid FROM pg_stat_activity
        WHERE (datname = current_database() AND pid <> pg_backend_pid()) OR backend_type = 'walwriter'
        """
    ).fetchall()
    return [int(r[0]) for r in rows]


def _cpu_usage(first: "CpuSample | None", last: "CpuSample | None", tasks: int) -> str | None:
    if first is None or last is None or last.at - first.at < 0.05 or not tasks:
        return None
    wall = last.at - first.at
    worker = last.worker - first.worker
    postgres = last.postgres - first.postgres
    machine = (last.machine_busy - first.machine_busy) / (last.machine_total - first.machine_total)
    return (
        f"while draining: runworkers used {worker / wall:.0%} of a core ({worker / tasks * 1e6:,.0f} us/task),"
        f" its PostgreSQL backends {postgres / wall:.0%} ({postgres / tasks * 1e6:,.0f} us/task);"
        f" the machine was {machine:.0%} busy"
    )


# 4. Enqueue-to-start latency -----------------------------------------------------------------


def latencies_ms(conn: psycopg.Connection[Any], queue: str, expected: int) -> list[float]:
    """started_at - created_at of a queue's tasks, once all have started (both from this host's clock)."""
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM tasks_task WHERE queue = %s AND started_at IS NOT NULL", [queue]
        ).fetchone()
        assert row is not None
        if row[0] >= expected:
            break
        time.sleep(0.05)
    rows = conn.execute(
        "SELECT extract(epoch FROM started_at - created_at) * 1000 FROM tasks_task"
        " WHERE queue = %s AND started_at IS NOT NULL",
        [queue],
    ).fetchall()
    if len(rows) < expected:
        progress(f"  WARNING {queue}: only {len(rows)} of {expected} tasks started within 10 s")
    return [float(r[0]) for r in rows]


def latency_figure(
    name: str, values: list[float], reference_p50: float | None, expected: int, enqueue_ms: list[float]
) -> Figure:
    if not values:
        return Figure("latency", name, math.nan, "ms", "no task started")
    p50, p95, p99 = (percentile(values, p) for p in (50, 95, 99))
    ratio = f"{p50 / reference_p50:.2f}x bare p50" if reference_p50 else "the reference"
    return Figure(
        "latency",
        name,
        p50,
        "ms",
        f"p50 {p50:.2f} / p95 {p95:.2f} / p99 {p99:.2f} ms",
        ratio,
        f"{len(values)}/{expected} samples, max {max(values):.2f} ms; the enqueue call itself (created_at is"
        f" stamped early in it, the NOTIFY fires at its commit) took p50 {percentile(enqueue_ms, 50):.2f} ms",
    )


def bare_latency(opts: Options, dsn: str, template: RowTemplate) -> tuple[list[float], list[float]]:
    """A listener that claims on NOTIFY, on its own: the wake-up limit of this machine.

    Returns the latencies and the durations of the enqueue transactions, in ms.
    """
    queue = "bench-latency-bare"
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def listen() -> None:
        try:
            with connect(dsn) as listener, connect(dsn) as claimer:
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(BARE_NOTIFY_CHANNEL)))
                ready.set()
                while not stop.is_set():
                    for _notify in listener.notifies(timeout=0.2, stop_after=1):
                        with claimer.cursor() as cur:
                            now = dt.datetime.now(UTC)
                            cur.execute(BARE_CLAIM_MANY, {"worker": "bench-bare-listener", "now": now, "limit": 5})
                            ids = [r[0] for r in cur.fetchall()]
                            if ids:
                                cur.execute(
                                    BARE_COMPLETE_MANY,
                                    {"ids": ids, "worker": "bench-bare-listener", "now": dt.datetime.now(UTC)},
                                )
        except BaseException as exc:
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    ready.wait(10)
    with connect(dsn) as conn:
        calls = []
        for _ in range(opts.latency_samples):
            started = time.perf_counter()
            with conn.transaction():
                conn.execute(template.insert_sql(1), template.params(1, queue=queue, at=dt.datetime.now(UTC)))
                conn.execute("SELECT pg_notify(%s, '')", [BARE_NOTIFY_CHANNEL])
            calls.append((time.perf_counter() - started) * 1000)
            time.sleep(opts.latency_spacing_ms / 1000)
        values = latencies_ms(conn, queue, opts.latency_samples)
    stop.set()
    thread.join(5)
    if errors:
        raise errors[0]
    return values, calls


def start_idle_pool(dsn: str, children: Children, env: dict[str, str], workers: int) -> subprocess.Popen[bytes]:
    """A runworkers process that has registered, woken for a first task, and gone idle again."""
    from tasks import services

    log_path = OUT_DIR / "latency-runworkers.log"
    proc = children.start(runworkers_cmd(workers, None), log_path=log_path, env=env)
    with connect(dsn) as conn:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_SECONDS
        while not any(pid == proc.pid for _id, pid in live_workers(conn)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"runworkers did not start:\n{log_tail(log_path)}")
            time.sleep(0.05)
        for _ in range(3):
            services.task_enqueue(type="noop", queue="bench-warmup")
            time.sleep(0.1)
        latencies_ms(conn, "bench-warmup", 3)
    time.sleep(1.0)  # idle: nothing claimed, the dispatcher waiting for a NOTIFY
    return proc


def bench_latency(
    opts: Options,
    dsn: str,
    template: RowTemplate,
    children: Children,
    env: dict[str, str],
    server: Server | None,
    report: Report,
) -> None:
    from tasks import services

    spacing = opts.latency_spacing_ms / 1000
    samples = opts.latency_samples
    with connect(dsn) as conn:
        reset_tables(conn)
    bare, calls = bare_latency(opts, dsn, template)
    reference = latency_figure("bare LISTEN/NOTIFY + claim (psycopg)", bare, None, samples, calls)
    report.add(reference)
    reference_p50 = None if math.isnan(reference.value) else reference.value

    proc = start_idle_pool(dsn, children, env, opts.workers)
    try:
        queue = "bench-latency-service"
        calls = []
        for _ in range(samples):
            started = time.perf_counter()
            services.task_enqueue(type="noop", queue=queue)
            calls.append((time.perf_counter() - started) * 1000)
            time.sleep(spacing)
        with connect(dsn) as conn:
            values = latencies_ms(conn, queue, samples)
        name = f"idle runworkers --workers {opts.workers}, services.task_enqueue"
        report.add(latency_figure(name, values, reference_p50, samples, calls))

        if server is not None:
            queue = "bench-latency-http"
            client = server.client()
            body = json.dumps({"type": "noop", "payload": {}, "queue": queue}).encode()
            calls = []
            for _ in range(samples):
                started = time.perf_counter()
                status, text = client.post_tasks(body)
                calls.append((time.perf_counter() - started) * 1000)
                if status != 201:
                    raise RuntimeError(f"POST /tasks answered {status}: {text[:200]!r}")
                time.sleep(spacing)
            client.close()
            with connect(dsn) as conn:
                values = latencies_ms(conn, queue, samples)
            name = f"idle runworkers --workers {opts.workers}, HTTP POST /tasks"
            report.add(latency_figure(name, values, reference_p50, samples, calls))
    finally:
        children.stop(proc)


# Main --------------------------------------------------------------------------------------


def setup_django(dsn: str) -> None:
    sys.path.insert(0, str(ROOT))
    os.environ["DB_DSN"] = dsn
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "taskflow_project.settings")
    import django

    django.setup()


def code_version() -> str:
    """The commit measured, and whether the work tree had changes on top of it."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        changes = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{ROOT} (not a git checkout)"
    return f"commit {commit}" + (" with uncommitted changes" if changes else "")


def header(database: tuple[str, str], opts: Options, server: Server | None, load_at_start: float) -> list[str]:
    version, name = database
    now = dt.datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    lines = [
        f"TaskFlow bench, {now}: PostgreSQL {version}, database {name}, {os.cpu_count()} CPUs,"
        f" Python {sys.version.split()[0]}",
        f"code: {code_version()}; load average {load_at_start:.2f} at start"
        " (other processes on these cores skew every figure alike: read the ratios)",
    ]
    if server is not None:
        lines.append(
            f"gunicorn WEB_CONCURRENCY={server.workers} GUNICORN_THREADS={server.threads};"
            f" {opts.clients} HTTP client threads in this process (same machine)"
        )
    return lines


def targets(report: Report) -> list[str]:
    """DESIGN.md's and issue 3's targets, met or not."""
    lines = ["targets:"]
    drains = [f for f in report.figures if f.section == "drain" and "default" in f.name]
    if drains and not math.isnan(drains[0].value):
        rate = drains[0].value
        lines.append(f"  drain >= 5,000 tasks/s (DESIGN.md): {'met' if rate >= 5000 else 'NOT met'} ({rate:,.0f})")
        if report.claim_one_rate:
            met = rate >= report.claim_one_rate
            lines.append(
                f"  drain >= bare 1-row loop (issue 3): {'met' if met else 'NOT met'}"
                f" ({rate:,.0f} vs {report.claim_one_rate:,.0f})"
            )
    idle = [f for f in report.figures if f.section == "latency" and "services" in f.name]
    if idle and not math.isnan(idle[0].value):
        p50 = idle[0].value
        lines.append(f"  idle enqueue-to-start p50 < 2 ms (DESIGN.md): {'met' if p50 < 2 else 'NOT met'} ({p50:.2f})")
        lines.append(f"  idle enqueue-to-start p50 < 5 ms (issue 3): {'met' if p50 < 5 else 'NOT met'} ({p50:.2f})")
    return lines if len(lines) > 1 else []


def run(opts: Options, dsn: str, children: Children, report: Report) -> None:
    env = {**os.environ, "DB_DSN": dsn}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]
    ensure_database(dsn)
    progress(f"migrating {psycopg.conninfo.conninfo_to_dict(dsn)['dbname']} ...")
    migrate(env)
    setup_django(dsn)
    with connect(dsn) as conn:
        if others := live_workers(conn):
            raise SystemExit(f"workers are running on this database (id, pid): {others}; stop them first")
        row = conn.execute("SELECT current_setting('server_version'), current_database()").fetchone()
        assert row is not None
        database = (str(row[0]), str(row[1]))
    template = make_template(dsn)
    server: Server | None = None
    try:
        if "bare" in opts.sections:
            progress("1. bare-SQL limit ...")
            section(report, "limit", lambda: bench_bare(opts, dsn, template, report))
        if {"http", "latency"} & opts.sections:
            server = Server(children, env)
        if server is not None and "http" in opts.sections:
            progress(f"2. enqueue over HTTP (gunicorn on port {server.port}) ...")
            section(report, "enqueue", lambda: bench_http(opts, dsn, server, report))
        if "drain" in opts.sections:
            progress(f"3. drain {opts.tasks:,} noop tasks ...")
            bench_drain(opts, dsn, template, children, env, report)
        if "latency" in opts.sections:
            progress(f"4. enqueue-to-start latency, {opts.latency_samples} samples each ...")
            section(report, "latency", lambda: bench_latency(opts, dsn, template, children, env, server, report))
    finally:
        report.header = header(database, opts, server, load_at_start)
        if server is not None:
            server.stop()
    with contextlib.suppress(psycopg.Error), connect(dsn) as conn:
        reset_tables(conn)


def section(report: Report, name: str, body: Callable[[], None]) -> None:
    """Run one section; a failure is reported in the table and the next section still runs."""
    try:
        body()
    except Exception as exc:
        report.add(Figure(name, "section failed", math.nan, "", "FAILED", detail=f"{type(exc).__name__}: {exc}"))


class Interrupted(BaseException):  # not an Exception: a section must not swallow it
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    dsn = os.environ.get("DB_DSN") or DEFAULT_DSN
    name = str(psycopg.conninfo.conninfo_to_dict(dsn).get("dbname", ""))
    if "bench" not in name and not opts.force:
        raise SystemExit(f"refusing to empty tasks_task in {name!r}: use a *bench* database or --force")
    if opts.profile and not opts.py_spy:
        raise SystemExit("--profile needs py-spy: pip install py-spy, or pass --py-spy PATH")

    children = Children()
    atexit.register(children.stop_all)

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)  # unwinds through the finally below, like Ctrl-C

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
    report = Report()
    started = time.perf_counter()
    status = 0
    try:
        run(opts, dsn, children, report)
    except KeyboardInterrupt:
        progress("interrupted: stopping subprocesses")
        status = 128 + signal.SIGINT
    except Interrupted as exc:
        progress("terminated: stopping subprocesses")
        status = 128 + exc.signum
    finally:
        children.stop_all()
    report.notes += targets(report)
    report.notes.append(f"whole run {time.perf_counter() - started:.0f} s; subprocess logs in var/bench/")
    print(report.render(), flush=True)
    if opts.json_path is not None:
        payload = {"header": report.header, "figures": [asdict(f) for f in report.figures]}
        opts.json_path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return status


def _iter_lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


if __name__ == "__main__":
    sys.exit(main())
