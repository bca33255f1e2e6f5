"""gunicorn settings shared by `make run`, the Dockerfile and the tests that start gunicorn."""

import os

from taskflow_project.logging import configure_logging, stdlib_logging_config

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8080')}"  # noqa: S104 - a container's API
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
worker_class = "gthread"
timeout = 30  # seconds
graceful_timeout = 10  # seconds
# No control socket: its default path is shared by every gunicorn of the same user, and
# nothing here manages gunicorn at run time.
control_socket_disable = True
accesslog = None  # tasks.middleware logs one JSON line per request
logconfig_dict = stdlib_logging_config(os.environ.get("LOG_LEVEL", "INFO"))


def post_worker_init(worker: object) -> None:
    # gunicorn applies its own logging config after Django's settings ran: restore ours.
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
