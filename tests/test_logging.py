"""Logs are structlog JSON lines on stdout: one `request` event per request, Django's errors too.

The requests run in a subprocess: logging is configured once per process, bound to the stdout
the process started with, which pytest's capture (capfd included) does not see.
This module is also the subprocess's URLconf, adding a view that raises.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.http import HttpRequest, HttpResponse
from django.urls import path

from taskflow_project import urls as project_urls

ROOT = Path(__file__).resolve().parent.parent


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom: a view failed")


urlpatterns = [path("boom", boom), *project_urls.urlpatterns]
handler404 = project_urls.handler404
handler500 = project_urls.handler500

REQUESTS = """
import django
from django.test import Client
from django.test.utils import override_settings

django.setup()
client = Client(raise_request_exception=False)
with override_settings(ROOT_URLCONF="tests.test_logging"):
    for method, path, body in [
        ("get", "/health", None),
        ("post", "/tasks", "{not json"),
        ("get", "/tasks/not-a-uuid", None),
        ("get", "/boom", None),
    ]:
        kwargs = {"content_type": "application/json"} if body is not None else {}
        response = getattr(client, method)(path, *([body] if body is not None else []), **kwargs)
        print("RESPONSE", response.status_code, response.content.decode(), flush=True)
"""


def run_requests(tmp_path: Path, **env: str) -> tuple[list[dict[str, Any]], list[str], str]:
    """Run REQUESTS in a fresh process; returns its JSON log events, its RESPONSE lines and stderr."""
    result = subprocess.run(
        [sys.executable, "-c", REQUESTS],
        cwd=ROOT,
        env={
            "PATH": os.environ["PATH"],
            "LANG": "C.UTF-8",
            "DJANGO_SETTINGS_MODULE": "taskflow_project.settings",
            # An empty SQLite file is enough: /health only runs SELECT 1.
            "DB_DSN": f"sqlite:///{tmp_path / 'logging.sqlite3'}",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    events, responses = [], []
    for line in result.stdout.splitlines():
        if line.startswith("RESPONSE "):
            responses.append(line)
        elif line.strip():
            events.append(json.loads(line))  # anything else on stdout must be a JSON log event
    return events, responses, result.stderr


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], list[str], str]:
    return run_requests(tmp_path_factory.mktemp("logging"))


def request_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "request"]


def test_request_log__one_json_line_per_request_with_method_path_status_duration(default_run):
    events, responses, _ = default_run

    assert len(responses) == 4
    logged = request_events(events)
    assert [(e["method"], e["path"], e["status"]) for e in logged] == [
        ("GET", "/health", 200),
        ("POST", "/tasks", 400),
        ("GET", "/tasks/not-a-uuid", 404),
        ("GET", "/boom", 500),
    ]
    for event in logged:
        assert isinstance(event["duration_ms"], int | float)
        assert event["duration_ms"] >= 0
        assert event["level"] == "info"
        assert event["timestamp"].endswith("Z")


def test_error_log__a_failing_view_logs_one_json_line_with_the_traceback(default_run):
    events, responses, stderr = default_run

    errors = [e for e in events if e.get("level") == "error"]
    assert len(errors) == 1
    [error] = errors
    assert error["logger"] == "django.request"
    assert "/boom" in error["event"]
    assert error["status_code"] == 500
    assert "Traceback" in error["exception"]
    assert "RuntimeError: boom: a view failed" in error["exception"]
    assert "boom" not in stderr  # nothing about it in plain text elsewhere
    # The client gets the JSON error body, not Django's HTML page nor the traceback.
    assert responses[-1] == 'RESPONSE 500 {"error": "internal error; it has been logged"}'


def test_log_level__warning_drops_request_lines_but_keeps_errors(tmp_path):
    events, responses, _ = run_requests(tmp_path, LOG_LEVEL="WARNING")

    assert len(responses) == 4
    assert request_events(events) == []
    assert [e["logger"] for e in events if e.get("level") == "error"] == ["django.request"]
