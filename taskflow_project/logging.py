"""One pipeline for every log line: structlog renders JSON lines on stdout.

TaskFlow's own events go through structlog's fast bytes logger (workers log a line per
task transition, thousands per second); Django's and other libraries' stdlib records are
rendered by the same processors through `ProcessorFormatter`.
"""

import logging
import logging.config
import sys
from typing import Any

import orjson
import structlog

_shared_processors: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _drop_unserialisable(
    event_dict: structlog.typing.EventDict,
) -> structlog.typing.EventDict:
    # Django attaches the request object to some records; it is not JSON.
    event_dict.pop("request", None)
    return event_dict


def _numeric(level: str) -> int:
    return logging.getLevelNamesMapping().get(level.upper(), logging.INFO)


def configure_logging(level: str = "INFO") -> None:
    """Configure structlog and stdlib logging to print JSON lines on stdout."""
    numeric_level = _numeric(level)
    structlog.configure(
        processors=[
            *_shared_processors,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    logging.config.dictConfig(stdlib_logging_config(level))


def stdlib_logging_config(level: str) -> dict[str, Any]:
    """The dictConfig for stdlib loggers (Django, gunicorn, libraries): JSON through structlog."""
    numeric_level = _numeric(level)
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": structlog.stdlib.ProcessorFormatter,
                "foreign_pre_chain": [
                    *_shared_processors,
                    structlog.stdlib.add_logger_name,
                    structlog.stdlib.ExtraAdder(),
                ],
                "processors": [
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    lambda _logger, _name, event_dict: _drop_unserialisable(event_dict),
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(default=str),
                ],
            },
        },
        "handlers": {
            "stdout": {
                "class": "logging.StreamHandler",
                "stream": "ext://sys.stdout",
                "formatter": "json",
            },
        },
        "root": {"handlers": ["stdout"], "level": numeric_level},
        "loggers": {
            # Requests are logged once, by tasks.middleware; Django's own 4xx/5xx
            # lines would repeat them. Errors with tracebacks still come through.
            "django.request": {"level": "ERROR"},
            "django.server": {"level": "WARNING"},
            "gunicorn.error": {
                "level": numeric_level,
                "handlers": ["stdout"],
                "propagate": False,
            },
            "gunicorn.access": {
                "level": "WARNING",
                "handlers": ["stdout"],
                "propagate": False,
            },
        },
    }
