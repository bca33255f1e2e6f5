import pytest

from tasks.models import Task, TaskStatus
from tasks.services import task_enqueue
from tests.conftest import wait_until
from tests.handlers import side_effects


@pytest.mark.django_db(transaction=True)  # the pool's threads need committed rows
def test_worker_pool__runs_tasks_to_done(worker_pool):
    tasks = [task_enqueue(type="count", payload={"key": f"smoke-{i}"}) for i in range(20)]
    worker_pool(concurrency=3)
    wait_until(lambda: Task.objects.filter(status=TaskStatus.DONE).count() == 20)
    assert side_effects("smoke-") == {f"smoke-{i}": 1 for i in range(20)}
    assert Task.objects.get(id=tasks[0].id).result == 1
