import signal
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from tasks.worker import WorkerPool

MAX_WORKERS = 256


class Command(BaseCommand):
    help = "Run a pool of worker threads that claim and run ready tasks until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workers", type=int, default=5, help="handler threads (default 5)")
        parser.add_argument(
            "--queues",
            default="",
            help="comma-separated queues to take tasks from (default: all)",
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=30.0,
            help="seconds running tasks get to finish on shutdown",
        )
        parser.add_argument(
            "--prefetch",
            type=int,
            default=None,
            help="tasks claimed ahead of free threads",
        )
        parser.add_argument("--lease", type=float, default=None, help="lease length in seconds")
        parser.add_argument("--poll-interval", type=float, default=None, help="seconds between polls")

    def handle(self, *args: Any, **options: Any) -> None:
        workers: int = options["workers"]
        if not 1 <= workers <= MAX_WORKERS:
            raise CommandError(f"--workers must be between 1 and {MAX_WORKERS}")
        if options["grace"] < 0:
            raise CommandError("--grace must be zero or more seconds")
        if options["prefetch"] is not None and options["prefetch"] < 0:
            raise CommandError("--prefetch must be zero or more")
        for name in ("lease", "poll_interval"):
            if options[name] is not None and options[name] <= 0:
                raise CommandError(f"--{name.replace('_', '-')} must be more than zero seconds")
        queues = [q.strip() for q in options["queues"].split(",") if q.strip()]
        pool = WorkerPool(
            concurrency=workers,
            queues=queues,
            grace_seconds=options["grace"],
            prefetch=options["prefetch"],
            lease_seconds=options["lease"],
            poll_interval_seconds=options["poll_interval"],
        )

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            pool.signal_received(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        pool.run()
