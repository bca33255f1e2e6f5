import datetime
import json
import os
import signal
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from tasks.models import Task, TaskStatus, Worker
from tasks.services import task_enqueue
from tests.conftest import ROOT


@pytest.mark.django_db
def test_prunetasks__deletes_only_old_finished_tasks(capsys):
    old = timezone.now() - datetime.timedelta(days=8)
    kept_pending = task_enqueue(type="noop")
    kept_recent = task_enqueue(type="noop")
    Task.objects.filter(id=kept_recent.id).update(status=TaskStatus.DONE, finished_at=timezone.now())
    doomed = [task_enqueue(type="noop") for _ in range(5)]
    Task.objects.filter(id__in=[t.id for t in doomed]).update(status=TaskStatus.FAILED, finished_at=old)
    Worker.objects.create(id="gone", hostname="h", pid=1, concurrency=1, last_heartbeat_at=old)
    Worker.objects.create(id="alive", hostname="h", pid=2, concurrency=1)
    call_command("prunetasks", "--older-than", "7d", "--batch-size", "2")
    assert set(Task.objects.values_list("id", flat=True)) == {kept_pending.id, kept_recent.id}
    assert list(Worker.objects.values_list("id", flat=True)) == ["alive"]
    assert "deleted 5 finished tasks and 1 worker records" in capsys.readouterr().out


@pytest.mark.django_db
@pytest.mark.parametrize("age", ["7", "d7", "7 weeks", "-1d", ""])
def test_prunetasks__rejects_bad_durations(age):
    with pytest.raises(CommandError, match="--older-than"):
        call_command("prunetasks", "--older-than", age)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "--workers must be between 1 and 256"),
        (["--grace", "-1"], "--grace must be zero or more"),
        (["--lease", "0"], "--lease must be more than zero"),
    ],
)
def test_runworkers__rejects_bad_options(args, message):
    result = subprocess.run(
        [sys.executable, "manage.py", "runworkers", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_runworkers__waits_for_an_absent_database_and_stops_on_one_signal():
    env = {
        "PATH": os.environ["PATH"],
        "DB_DSN": "postgres://nobody@127.0.0.1:9/nowhere",  # port 9 (discard): nothing listens
    }
    process = subprocess.Popen(
        [sys.executable, "manage.py", "runworkers"], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        first = json.loads(process.stdout.readline())  # it keeps trying, and says so
        assert (first["event"], first["during"]) == ("database_unavailable", "register")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert '"registered":false' in process.stdout.read()
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
