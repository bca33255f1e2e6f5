"""The Go seed README's curl examples, run literally against gunicorn (as the Dockerfile starts it) and runworkers."""

import datetime
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from tests.conftest import subprocess_db_dsn, wait_until

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")  # the virtualenv's, as .venv/bin/gunicorn
STARTUP_TIMEOUT = 30.0  # seconds for gunicorn to answer /health

# Copied verbatim from the seed README (port 8080 is replaced with the test server's).
SEED_HEALTH = "curl localhost:8080/health"
SEED_CREATE = """curl -X POST http://localhost:8080/tasks \\
  -H "Content-Type: application/json" \\
  -d '{
    "type": "email",
    "payload": {
      "to": "user@example.com"
    }
  }'"""
SEED_GET = "curl http://localhost:8080/tasks/550e8400-e29b-41d4-a716-446655440000"
SEED_LIST = "curl http://localhost:8080/tasks"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Gunicorn:
    port: int
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request sent

    def curl(self, command: str) -> Any:
        """Run a seed README curl command through bash, on this server's port; returns the JSON it printed."""
        path = command.split("8080", 1)[1].split()[0].split("'")[0]
        self.requests.append(("POST" if "-X POST" in command else "GET", path))
        result = subprocess.run(
            ["bash", "-c", command.replace("8080", str(self.port))],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        return json.loads(result.stdout)

    def log_lines(self) -> list[str]:
        return [line for line in self.stdout.read_text().splitlines() if line.strip()]


def wait_for_health(server: Gunicorn) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        if server.process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"gunicorn did not start:\n{server.stdout.read_text()[-3000:]}\n{server.stderr.read_text()[-3000:]}"
            )
        try:
            server.requests.append(("GET", "/health"))
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            exc.close()
        except OSError:
            server.requests.pop()  # refused: gunicorn was not listening yet, so it logged nothing
        time.sleep(0.1)


@pytest.fixture
def gunicorn(transactional_db: None, tmp_path: Path) -> Iterator[Gunicorn]:
    """`gunicorn -c gunicorn.conf.py taskflow_project.wsgi` as the Dockerfile runs it, on the test database."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "DB_DSN": subprocess_db_dsn(),
        "WEB_CONCURRENCY": "1",
    }
    env.pop("DATABASE_URL", None)
    stdout, stderr = tmp_path / "gunicorn.out", tmp_path / "gunicorn.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [str(GUNICORN), "-c", "gunicorn.conf.py", "taskflow_project.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=err,
        )
    server = Gunicorn(port=port, process=process, stdout=stdout, stderr=stderr)
    try:
        wait_for_health(server)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # gunicorn and the worker are other processes: they see committed rows only
def test_seed_readme__curl_examples_work_and_the_email_is_sent(gunicorn, worker_process):
    worker = worker_process("--workers", "2")

    health = gunicorn.curl(SEED_HEALTH)
    created = gunicorn.curl(SEED_CREATE)
    task_id = created["id"]
    fetched = gunicorn.curl(SEED_GET.replace("550e8400-e29b-41d4-a716-446655440000", task_id))

    assert health == {"status": "ok", "env": settings.ENV, "database": "ok"}
    assert uuid.UUID(task_id)
    assert created["type"] == "email"
    assert created["payload"] == {"to": "user@example.com"}
    assert created["status"] == "pending"
    assert created["created_at"].endswith("Z")
    assert created["updated_at"].endswith("Z")
    assert fetched["id"] == task_id
    assert fetched["payload"] == {"to": "user@example.com"}

    def email_done() -> bool:
        task = gunicorn.curl(SEED_GET.replace("550e8400-e29b-41d4-a716-446655440000", task_id))
        assert task["status"] in ("pending", "running", "done"), task
        return bool(task["status"] == "done")

    try:
        wait_until(email_done, timeout=30, interval=0.1)
    except AssertionError:
        raise AssertionError(f"the email task never finished; worker log:\n{worker.logs()[-3000:]}") from None
    listed = gunicorn.curl(SEED_LIST)

    assert isinstance(listed, list)
    [done] = [t for t in listed if t["id"] == task_id]
    assert done["status"] == "done"
    assert done["result"] == {"sent": 1}
    assert done["attempts"] == 1
    assert datetime.datetime.fromisoformat(done["finished_at"]) > datetime.datetime.fromisoformat(done["created_at"])
    assert "user@example.com" in worker.logs()  # the console email backend printed it

    # Every line gunicorn wrote to stdout is a JSON event; each request got exactly one `request` line.
    gunicorn.process.terminate()
    gunicorn.process.wait(timeout=15)
    events = [json.loads(line) for line in gunicorn.log_lines()]
    assert gunicorn.stderr.read_text() == ""  # all logs go to stdout
    logged = [(e["method"], e["path"]) for e in events if e.get("event") == "request"]
    assert sorted(logged) == sorted(gunicorn.requests)
    for event in (e for e in events if e.get("event") == "request"):
        assert isinstance(event["status"], int)
        assert 200 <= event["status"] < 300, event
        assert isinstance(event["duration_ms"], int | float)
        assert event["duration_ms"] >= 0
    statuses = {(e["method"], e["path"]): e["status"] for e in events if e.get("event") == "request"}
    assert statuses[("POST", "/tasks")] == 201
    assert statuses[("GET", "/tasks")] == 200
    assert statuses[("GET", f"/tasks/{task_id}")] == 200
