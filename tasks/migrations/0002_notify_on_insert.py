"""PostgreSQL: every INSERT into tasks_task wakes idle workers, whatever inserted the rows.

The notification rides on the inserting transaction's commit, so an enqueue costs no extra
round trip, and rows added by raw SQL, data migrations or other tools wake workers too.
SQLite has no NOTIFY: its workers poll.
"""

from django.db import migrations
from django.db.backends.base.schema import BaseDatabaseSchemaEditor
from django.db.migrations.state import StateApps

CHANNEL = "taskflow_tasks"  # tasks.queue.NOTIFY_CHANNEL, fixed here as migrations are

CREATE = f"""
CREATE FUNCTION tasks_task_notify_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One notification per queue per statement: a batch of a thousand wakes workers once.
    PERFORM pg_notify('{CHANNEL}', queue) FROM (SELECT DISTINCT queue FROM inserted) AS queues;
    RETURN NULL;
END
$$;
CREATE TRIGGER tasks_task_notify_inserted
    AFTER INSERT ON tasks_task REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION tasks_task_notify_inserted();
"""

DROP = """
DROP TRIGGER IF EXISTS tasks_task_notify_inserted ON tasks_task;
DROP FUNCTION IF EXISTS tasks_task_notify_inserted();
"""


def create_trigger(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def drop_trigger(apps: StateApps, schema_editor: BaseDatabaseSchemaEditor) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("tasks", "0001_initial")]

    operations = [migrations.RunPython(create_trigger, drop_trigger, elidable=False)]
