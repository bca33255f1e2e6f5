import datetime
import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from tasks.models import FINISHED_STATUSES, Task, Worker

DURATION = re.compile(r"^(\d+)([smhd])$")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_BATCH_SIZE = 1000  # rows per DELETE: short transactions, no long lock on the table


def parse_duration(text: str) -> datetime.timedelta:
    match = DURATION.match(text.strip())
    if not match:
        raise CommandError(f"--older-than takes a number and a unit (s, m, h, d), like 7d or 12h, not {text!r}")
    return datetime.timedelta(seconds=int(match[1]) * UNIT_SECONDS[match[2]])


class Command(BaseCommand):
    help = (
        "Delete finished (done, failed, cancelled) tasks older than a given age, in batches, "
        "and the registry rows of workers gone that long."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--older-than", default="7d", help="age of finished tasks to delete (default 7d)")
        parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        cutoff = timezone.now() - parse_duration(options["older_than"])
        batch_size: int = options["batch_size"]
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        deleted = 0
        while True:
            # Served by task_finished_idx.
            ids = list(
                Task.objects.filter(status__in=FINISHED_STATUSES, finished_at__lt=cutoff).values_list("id", flat=True)[
                    :batch_size
                ]
            )
            if not ids:
                break
            deleted += Task.objects.filter(id__in=ids).delete()[0]
        workers, _ = Worker.objects.filter(last_heartbeat_at__lt=cutoff).delete()
        self.stdout.write(
            f"deleted {deleted} finished tasks and {workers} worker records older than {options['older_than']}"
        )
