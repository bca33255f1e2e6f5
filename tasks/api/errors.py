"""Every API error is JSON: {"error": "<what went wrong>", ...details}."""

from typing import Any

import structlog
from django.db import InterfaceError, OperationalError
from rest_framework import status
from rest_framework.exceptions import APIException, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

log = structlog.get_logger("tasks.api")


class Conflict(APIException):
    """The task's state does not allow the transition; the body names its status."""

    status_code = status.HTTP_409_CONFLICT
    default_code = "conflict"

    def __init__(self, detail: str, *, task_status: str) -> None:
        super().__init__(detail)
        self.extra = {"status": task_status}


class LengthRequired(APIException):
    """Django reads a WSGI body only up to its Content-Length: a chunked body would be read as empty."""

    status_code = status.HTTP_411_LENGTH_REQUIRED
    default_detail = "send the body with a Content-Length header; chunked request bodies are not supported"
    default_code = "length_required"


def error_body(message: str, **details: Any) -> dict[str, Any]:
    return {"error": message, **{k: v for k, v in details.items() if v is not None}}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, OperationalError | InterfaceError):
        # The database is away (restart, failover): say so, and let the client retry.
        log.warning("database_unavailable", error=str(exc).strip()[:500])
        return Response(
            error_body("database unavailable; retry shortly"),
            status=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )
    response = drf_exception_handler(exc, context)
    if response is None:
        return None  # not an API error: Django's handler500 answers, and the error is logged
    if isinstance(exc, ValidationError):
        detail = response.data
        if isinstance(detail, dict) and "error" in detail:
            return response
        response.data = error_body("invalid request", fields=detail if isinstance(detail, dict) else None)
        if isinstance(detail, list):
            response.data["detail"] = detail
        return response
    message = exc.detail if isinstance(exc, APIException) else str(exc)
    extra = getattr(exc, "extra", None) or {}
    response.data = error_body(str(message), **extra)
    return response
