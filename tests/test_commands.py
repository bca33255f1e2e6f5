import datetime
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
