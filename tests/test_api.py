"""The HTTP contract of DESIGN.md, field by field: POST/GET /tasks, retry, cancel, health, schema and docs."""

import base64
import datetime
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from django.conf import settings as django_settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from tasks.handlers import registry
from tasks.models import Task, TaskStatus
from tasks.services import TaskSpec, task_enqueue, task_enqueue_many

pytestmark = pytest.mark.django_db

TASK_FIELDS = {
    "id",
    "type",
    "payload",
    "status",
    "queue",
    "priority",
    "attempts",
    "max_attempts",
    "run_after",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "result",
    "error",
}
TIMESTAMP_FIELDS = ("run_after", "created_at", "updated_at", "started_at", "finished_at")
RFC3339_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")
SEED_EMAIL = {
    "type": "email",
    "payload": {"to": "user@example.com", "subject": "Hello", "body": "Welcome to TaskFlow"},
}
UNKNOWN_ID = "0b9f5c3e-6d1a-4c8e-9f2a-7e3d1c5b4a69"  # a valid UUID no test stores
LINK_NEXT = re.compile(r'<([^>]+)>; rel="next"')


def post_json(api: APIClient, body: Any, **headers: str) -> Any:
    return api.post("/tasks", body, format="json", headers=headers)


def post_raw(api: APIClient, raw: str | bytes, content_type: str = "application/json") -> Any:
    return api.post("/tasks", raw, content_type=content_type)


def parse_time(value: str) -> datetime.datetime:
    assert RFC3339_UTC.fullmatch(value), f"not RFC 3339 UTC with Z: {value!r}"
    return datetime.datetime.fromisoformat(value)


def assert_json_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict)
    assert isinstance(body["error"], str)
    assert body["error"]
    return body


def table_snapshot() -> list[Any]:
    """Every column of every row, to prove a rejected request changed nothing."""
    return list(Task.objects.order_by("id").values())


def make_task(status: TaskStatus, **fields: Any) -> Task:
    task = task_enqueue(type="noop")
    Task.objects.filter(id=task.id).update(status=status, **fields)
    return Task.objects.get(id=task.id)


def next_link(response: Any) -> str | None:
    header = response.get("Link")
    if header is None:
        return None
    match = LINK_NEXT.fullmatch(header)
    assert match, f"not an RFC 8288 rel=next link: {header!r}"
    return match.group(1)


def forged_cursor(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


@pytest.fixture
def existing_task() -> Task:
    """A row that bad requests must leave alone."""
    return task_enqueue(type="noop", payload={"keep": True})


@pytest.fixture
def fifty_char_type() -> Iterator[str]:
    name = "t" * 50
    registry.register(name, lambda **_: None)
    yield name
    registry.unregister(name)


# POST /tasks: one task


def test_post_task__201_with_every_field_of_the_contract(api):
    before = timezone.now()
    response = post_json(api, SEED_EMAIL)
    after = timezone.now()

    assert response.status_code == 201
    body = response.json()
    assert set(body) >= TASK_FIELDS
    assert uuid.UUID(body["id"]).version == 4
    assert body["type"] == "email"
    assert body["payload"] == SEED_EMAIL["payload"]
    assert body["status"] == "pending"
    assert body["queue"] == "default"
    assert body["priority"] == 0
    assert body["attempts"] == 0
    assert body["max_attempts"] == django_settings.TASKFLOW["DEFAULT_MAX_ATTEMPTS"]
    assert body["started_at"] is None
    assert body["finished_at"] is None
    assert body["result"] is None
    assert not body["error"]
    created_at = parse_time(body["created_at"])
    assert before <= created_at <= after
    assert parse_time(body["updated_at"]) == created_at
    assert parse_time(body["run_after"]) == created_at  # ready at once
    stored = Task.objects.get(id=body["id"])
    assert (stored.type, stored.payload, stored.status) == ("email", SEED_EMAIL["payload"], TaskStatus.PENDING)


def test_post_task__content_type_with_charset_accepted(api):
    response = post_raw(api, json.dumps({"type": "noop"}), content_type="application/json; charset=utf-8")

    assert response.status_code == 201
    assert Task.objects.filter(id=response.json()["id"]).exists()


def test_post_task__payload_defaults_to_empty_object(api):
    response = post_json(api, {"type": "noop"})

    assert response.status_code == 201
    assert response.json()["payload"] == {}


def test_post_task__optional_fields_are_stored(api):
    response = post_json(
        api,
        {
            "type": "noop",
            "payload": {"n": 1},
            "queue": "emails.high",
            "priority": 100,
            "max_attempts": 7,
            "run_after": "2030-01-02T03:04:05+02:00",
        },
    )

    assert response.status_code == 201
    body = response.json()
    assert body["queue"] == "emails.high"
    assert body["priority"] == 100
    assert body["max_attempts"] == 7
    assert body["run_after"] == "2030-01-02T01:04:05Z"  # converted to UTC
    stored = Task.objects.get(id=body["id"])
    assert stored.run_after == datetime.datetime(2030, 1, 2, 1, 4, 5, tzinfo=datetime.UTC)
    assert (stored.queue, stored.priority, stored.max_attempts) == ("emails.high", 100, 7)


def test_post_task__delay_is_seconds_from_now(api):
    response = post_json(api, {"type": "noop", "delay": 30})

    assert response.status_code == 201
    body = response.json()
    waited = parse_time(body["run_after"]) - parse_time(body["created_at"])
    assert datetime.timedelta(seconds=29) < waited <= datetime.timedelta(seconds=30)


@pytest.mark.parametrize("priority", [-100, 100])
def test_post_task__priority_bounds_accepted(api, priority):
    response = post_json(api, {"type": "noop", "priority": priority})

    assert response.status_code == 201
    assert response.json()["priority"] == priority


def test_post_task__type_of_fifty_characters_accepted(api, fifty_char_type):
    response = post_json(api, {"type": fifty_char_type})

    assert response.status_code == 201
    assert Task.objects.get().type == fifty_char_type


def test_post_task__idempotency_key_returns_the_stored_task(api):
    first = post_json(api, {"type": "noop", "payload": {"n": 1}, "idempotency_key": "order-42"})
    second = post_json(api, {"type": "noop", "payload": {"n": 2}, "idempotency_key": "order-42"})

    assert first.status_code == 201
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert second.json()["payload"] == {"n": 1}
    assert Task.objects.count() == 1


def test_post_task__idempotency_key_header_returns_the_stored_task(api):
    first = post_json(api, {"type": "noop"}, **{"Idempotency-Key": "order-43"})
    second = post_json(api, {"type": "noop"}, **{"Idempotency-Key": "order-43"})
    other = post_json(api, {"type": "noop"}, **{"Idempotency-Key": "order-44"})

    assert (first.status_code, second.status_code, other.status_code) == (201, 200, 201)
    assert second.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert Task.objects.count() == 2


def test_post_task__idempotency_key_header_and_body_key_are_one_namespace(api):
    first = post_json(api, {"type": "noop", "idempotency_key": "shared"})
    second = post_json(api, {"type": "noop"}, **{"Idempotency-Key": "shared"})

    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]


# POST /tasks: a batch


def test_post_batch__201_array_in_request_order_inserted_together(api):
    items = [{"type": "noop", "payload": {"n": n}} for n in range(3)] + [SEED_EMAIL]

    response = post_json(api, items)

    assert response.status_code == 201
    body = response.json()
    assert isinstance(body, list)
    assert [t["payload"] for t in body] == [item["payload"] for item in items]
    assert all(set(t) >= TASK_FIELDS and t["status"] == "pending" for t in body)
    # One enqueue: a microsecond apart, in request order (the claim's FIFO tie-break).
    created = [datetime.datetime.fromisoformat(t["created_at"]) for t in body]
    assert created == sorted(created)
    assert len(set(created)) == len(created)
    assert created[-1] - created[0] < datetime.timedelta(milliseconds=1)
    assert set(Task.objects.values_list("id", flat=True)) == {uuid.UUID(t["id"]) for t in body}


def test_post_batch__one_invalid_item_400_names_its_index_and_inserts_nothing(api, existing_task):
    before = table_snapshot()
    items = [{"type": "noop"}, {"type": "noop"}, {"type": "no-such-handler"}, {"type": "noop", "bogus": 1}]

    body = assert_json_error(post_json(api, items), 400)

    assert set(body["items"]) == {"2", "3"}
    assert "no-such-handler" in json.dumps(body["items"]["2"])
    assert "bogus" in body["items"]["3"]
    assert table_snapshot() == before


def test_post_batch__empty_array_400(api):
    assert_json_error(post_json(api, []), 400)
    assert Task.objects.count() == 0


def test_post_batch__over_max_batch_400(api, settings):
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_BATCH": 3}

    body = assert_json_error(post_json(api, [{"type": "noop"}] * 4), 400)
    at_limit = post_json(api, [{"type": "noop"}] * 3)

    assert "3" in body["error"]
    assert at_limit.status_code == 201
    assert Task.objects.count() == 3


def test_post_batch__idempotency_key_header_400(api):
    response = post_json(api, [{"type": "noop"}], **{"Idempotency-Key": "k"})

    assert_json_error(response, 400)
    assert Task.objects.count() == 0


def test_post_batch__repeated_idempotency_key_gives_one_task(api):
    response = post_json(api, [{"type": "noop", "idempotency_key": "k"}, {"type": "noop", "idempotency_key": "k"}])

    assert response.status_code == 201
    first, second = response.json()
    assert first["id"] == second["id"]
    assert Task.objects.count() == 1


# POST /tasks: bad input is a JSON error and changes nothing

BAD_BODIES = [
    pytest.param('{"type": "noop",', "malformed JSON", id="malformed-json"),
    pytest.param('{"type": "noop"} trailing', "malformed JSON", id="trailing-garbage"),
    pytest.param(b'{"type": "\xff"}', "malformed JSON", id="not-utf8"),
    pytest.param("null", "JSON object", id="null-body"),
    pytest.param('"noop"', "JSON object", id="string-body"),
    pytest.param("{}", "type", id="missing-type"),
    pytest.param('{"payload": {"to": "a@example.com"}}', "type", id="missing-type-with-payload"),
    pytest.param('{"type": ""}', "type", id="blank-type"),
    pytest.param('{"type": null}', "type", id="null-type"),
    pytest.param(json.dumps({"type": "x" * 51}), "50", id="type-over-50-chars"),
    pytest.param('{"type": "noop", "payload": [1, 2]}', "payload", id="payload-array"),
    pytest.param('{"type": "noop", "payload": "text"}', "payload", id="payload-string"),
    pytest.param('{"type": "noop", "payload": 5}', "payload", id="payload-number"),
    pytest.param('{"type": "noop", "payload": null}', "payload", id="payload-null"),
    pytest.param('{"type": "noop", "payload": {"a": "x\\u0000y"}}', "u0000", id="payload-nul-in-value"),
    pytest.param('{"type": "noop", "payload": {"x\\u0000": 1}}', "u0000", id="payload-nul-in-key"),
    pytest.param('{"type": "noop", "payload": {"a": "\\ud800"}}', "surrogates", id="payload-lone-surrogate"),
    pytest.param('{"type": "noop", "payload": {"\\udfff": 1}}', "surrogates", id="payload-lone-surrogate-key"),
    pytest.param(
        '{"type": "noop", "payload": {"a": ' + "[" * 150 + "]" * 150 + "}}", "nested deeper", id="payload-too-deep"
    ),
    pytest.param('{"type": "email", "payload": {}}', "'to'", id="payload-misses-handler-argument"),
    pytest.param(
        '{"type": "webhook", "payload": {"url": "http://example.com", "colour": "red"}}',
        "colour",
        id="payload-unknown-handler-argument",
    ),
    pytest.param('{"type": "noop", "bogus": 1}', "bogus", id="unknown-field"),
    pytest.param(
        '{"type": "noop", "run_after": "2030-01-01T00:00:00Z", "delay": 5}', "delay", id="run-after-and-delay"
    ),
    pytest.param('{"type": "noop", "run_after": "tomorrow"}', "run_after", id="run-after-not-a-time"),
    pytest.param('{"type": "noop", "run_after": "2030-13-01T00:00:00Z"}', "run_after", id="run-after-month-13"),
    pytest.param('{"type": "noop", "delay": -1}', "delay", id="negative-delay"),
    pytest.param('{"type": "noop", "delay": "soon"}', "delay", id="delay-not-a-number"),
    pytest.param('{"type": "noop", "delay": "NaN"}', "delay", id="delay-nan-text"),
    pytest.param('{"type": "noop", "priority": 101}', "priority", id="priority-over-100"),
    pytest.param('{"type": "noop", "priority": -101}', "priority", id="priority-under-minus-100"),
    pytest.param('{"type": "noop", "priority": "high"}', "priority", id="priority-not-a-number"),
    pytest.param('{"type": "noop", "priority": 1.5}', "priority", id="priority-fraction"),
    pytest.param('{"type": "noop", "max_attempts": 0}', "max_attempts", id="max-attempts-zero"),
    pytest.param('{"type": "noop", "queue": "two words"}', "queue", id="queue-with-space"),
    pytest.param('{"type": "noop", "queue": ""}', "queue", id="queue-blank"),
    pytest.param('{"type": "noop", "idempotency_key": ""}', "idempotency_key", id="idempotency-key-blank"),
]


@pytest.mark.parametrize(("raw", "mentions"), BAD_BODIES)
def test_post_task__bad_body_400_json_and_nothing_changed(api, existing_task, raw, mentions):
    before = table_snapshot()

    body = assert_json_error(post_raw(api, raw), 400)

    assert mentions in json.dumps(body, ensure_ascii=False), body
    assert table_snapshot() == before


def test_post_task__unknown_type_400_names_the_known_types(api):
    body = assert_json_error(post_json(api, {"type": "no-such-handler", "payload": {}}), 400)

    message = body["fields"]["type"][0]
    assert "no-such-handler" in message
    for known in ("email", "webhook", "noop", "sleep"):
        assert known in message
    assert Task.objects.count() == 0


def test_post_task__body_over_the_limit_413(api, settings, existing_task):
    limit = 200
    settings.TASKFLOW = {**settings.TASKFLOW, "MAX_BODY_BYTES": limit}
    before = table_snapshot()

    def body_of(size: int) -> bytes:
        frame = b'{"type": "noop", "payload": {"pad": ""}}'
        return frame.replace(b'""', b'"' + b"x" * (size - len(frame)) + b'"')

    too_large = post_raw(api, body_of(limit + 1))
    assert table_snapshot() == before
    at_limit = post_raw(api, body_of(limit))

    body = assert_json_error(too_large, 413)
    assert str(limit) in body["error"]
    assert at_limit.status_code == 201


def test_post_task__chunked_body_411_rather_than_read_as_empty(api):
    # Under WSGI Django sees no Content-Length, so the body would parse as {}: "type is required".
    response = api.post("/tasks", {"type": "noop"}, format="json", headers={"Transfer-Encoding": "chunked"})

    body = assert_json_error(response, 411)
    assert "Content-Length" in body["error"]
    assert Task.objects.count() == 0


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [
        ('{"type": "noop"}', "text/plain"),
        ("type=noop", "application/x-www-form-urlencoded"),
        ('{"type": "noop"}', "application/xml"),
        ('{"type": "noop"}', "application/octet-stream"),
        ('{"type": "noop"}', "application/jsonx"),
        ('{"type": "noop"}', ""),
    ],
)
def test_post_task__wrong_content_type_415(api, existing_task, raw, content_type):
    before = table_snapshot()

    response = api.generic("POST", "/tasks", raw, content_type=content_type)

    assert_json_error(response, 415)
    assert table_snapshot() == before


@pytest.mark.parametrize("key", ["k" * 256, "a\x00b"])
def test_post_task__bad_idempotency_key_header_400(api, key):
    assert_json_error(post_json(api, {"type": "noop"}, **{"Idempotency-Key": key}), 400)
    assert Task.objects.count() == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("delete", "/tasks"),
        ("put", "/tasks"),
        ("put", "/tasks/{id}"),
        ("patch", "/tasks/{id}"),
        ("delete", "/tasks/{id}"),
        ("post", "/tasks/{id}"),
        ("get", "/tasks/{id}/retry"),
        ("get", "/tasks/{id}/cancel"),
    ],
)
def test_wrong_method__405_json_and_nothing_changed(api, existing_task, method, path):
    before = table_snapshot()

    response = getattr(api, method)(path.format(id=existing_task.id))

    body = assert_json_error(response, 405)
    assert method.upper() in body["error"]
    assert table_snapshot() == before


def test_unknown_path__404_json(api):
    assert_json_error(api.get("/no/such/path"), 404)
    assert_json_error(api.get("/tasks/"), 404)  # the seed's paths have no trailing slash


# GET /tasks/{id}


def test_get_task__200_with_the_stored_task(api):
    created = post_json(api, SEED_EMAIL).json()

    response = api.get(f"/tasks/{created['id']}")

    assert response.status_code == 200
    assert response.json() == created


def test_get_task__shows_progress_made_by_the_worker(api):
    task = make_task(
        TaskStatus.DONE,
        attempts=1,
        result={"sent": 1},
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )

    body = api.get(f"/tasks/{task.id}").json()

    assert body["status"] == "done"
    assert body["result"] == {"sent": 1}
    assert body["attempts"] == 1
    for name in TIMESTAMP_FIELDS:
        parse_time(body[name])


@pytest.mark.parametrize(
    "task_id",
    [
        UNKNOWN_ID,
        "not-a-uuid",
        "1234",
        "550e8400-e29b-41d4-a716-44665544000",  # one digit short
        "550e8400-e29b-41d4-a716-446655440000-1",
        "%C3%A9",
    ],
)
def test_get_task__unknown_or_malformed_id_404_json(api, existing_task, task_id):
    body = assert_json_error(api.get(f"/tasks/{task_id}"), 404)

    assert "no task" in body["error"]


# GET /tasks


def test_list_tasks__bare_array_newest_first(api):
    ids = [post_json(api, {"type": "noop", "payload": {"n": n}}).json()["id"] for n in range(3)]

    response = api.get("/tasks")

    assert response.status_code == 200
    body = response.json()
    assert isinstance(body, list)
    assert [t["id"] for t in body] == ids[::-1]
    assert all(set(t) >= TASK_FIELDS for t in body)
    assert "Link" not in response


def test_list_tasks__empty_table_is_an_empty_array(api):
    response = api.get("/tasks")

    assert response.status_code == 200
    assert response.json() == []


def test_list_tasks__filters_by_status_type_and_queue(api):
    pending_noop = task_enqueue(type="noop")
    done_noop = make_task(TaskStatus.DONE)
    sleep_in_slow = task_enqueue(type="sleep", queue="slow")
    noop_in_slow = task_enqueue(type="noop", queue="slow")

    def ids(query: str) -> set[str]:
        response = api.get(f"/tasks?{query}")
        assert response.status_code == 200
        return {t["id"] for t in response.json()}

    assert ids("status=done") == {str(done_noop.id)}
    assert ids("status=pending") == {str(pending_noop.id), str(sleep_in_slow.id), str(noop_in_slow.id)}
    assert ids("type=sleep") == {str(sleep_in_slow.id)}
    assert ids("queue=slow") == {str(sleep_in_slow.id), str(noop_in_slow.id)}
    assert ids("queue=slow&type=noop") == {str(noop_in_slow.id)}
    assert ids("status=failed") == set()


def test_list_tasks__limit_defaults_to_100_and_goes_up_to_1000(api):
    task_enqueue_many(specs=[TaskSpec(type="noop")] * 1001)

    default = api.get("/tasks")
    maximum = api.get("/tasks?limit=1000")
    small = api.get("/tasks?limit=1")

    assert len(default.json()) == 100
    assert next_link(default) is not None
    assert len(maximum.json()) == 1000
    assert next_link(maximum) is not None
    assert len(small.json()) == 1


def test_list_tasks__cursor_pages_cover_every_task_once_in_order(api):
    task_enqueue(type="sleep")
    older = [task_enqueue(type="noop", payload={"n": n}) for n in range(5)]
    # A batch shares one created_at: the cursor must order ties by id, not skip or repeat them.
    batch = task_enqueue_many(specs=[TaskSpec(type="noop", payload={"batch": n}) for n in range(13)])
    newer = [task_enqueue(type="noop", payload={"n": n}) for n in range(5, 9)]
    task_enqueue(type="sleep")
    expected = [str(i) for i in Task.objects.filter(type="noop").newest_first().values_list("id", flat=True)]
    assert len(expected) == len(older) + len(batch) + len(newer)

    seen: list[str] = []
    url: str | None = "/tasks?type=noop&limit=4"
    pages = 0
    while url is not None:
        response = api.get(url)
        assert response.status_code == 200
        page = response.json()
        assert 1 <= len(page) <= 4
        seen.extend(t["id"] for t in page)
        url = next_link(response)
        if url is not None:
            query = parse_qs(urlsplit(url).query)
            assert query["type"] == ["noop"]  # filters and limit carry over to the next page
            assert query["limit"] == ["4"]
        pages += 1

    assert seen == expected
    assert pages == -(-len(expected) // 4)


def test_list_tasks__next_page_is_not_shifted_by_newer_tasks(api):
    for n in range(6):
        task_enqueue(type="noop", payload={"n": n})
    expected = [str(i) for i in Task.objects.newest_first().values_list("id", flat=True)]
    first = api.get("/tasks?limit=3")
    later = task_enqueue(type="noop")  # newer than the cursor: belongs on no following page

    rest = api.get(next_link(first))

    assert [t["id"] for t in first.json()] == expected[:3]
    assert [t["id"] for t in rest.json()] == expected[3:]
    assert str(later.id) not in {t["id"] for t in rest.json()}
    assert next_link(rest) is None


@pytest.mark.parametrize(
    ("query", "mentions"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=-5", "limit"),
        ("limit=ten", "limit"),
        ("limit=1.5", "limit"),
        ("limit=%C2%B2", "limit"),  # "²": str.isdigit() is True, int() fails
        ("limit=", "limit"),
        ("status=bogus", "pending"),
        ("status=PENDING", "pending"),
        ("cursor=not-a-cursor", "cursor"),
        ("cursor=%C3%A9", "cursor"),
        ("cursor=" + forged_cursor("2026-01-01T00:00:00|" + UNKNOWN_ID), "cursor"),  # naive
        ("cursor=" + forged_cursor("2026-01-01T00:00:00+00:00|nope"), "cursor"),
        # Out of range once in UTC: must be a 400, not an overflow in the database adapter.
        ("cursor=" + forged_cursor("0001-01-01T00:00:00+05:00|" + UNKNOWN_ID), "cursor"),
        ("cursor=" + forged_cursor("9999-12-31T23:59:59-05:00|" + UNKNOWN_ID), "cursor"),
        ("type=a%00b", "NUL"),
        ("queue=%00", "NUL"),
        ("page=2", "page"),
        ("offset=10&limit=5", "offset"),
        ("sort=created_at", "sort"),
    ],
)
def test_list_tasks__bad_query_400_json(api, existing_task, query, mentions):
    body = assert_json_error(api.get(f"/tasks?{query}"), 400)

    assert mentions in body["error"]


# POST /tasks/{id}/retry and /cancel


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_retry__failed_or_cancelled_back_to_pending_with_attempts_reset(api, status):
    task = make_task(status, attempts=3, error="RuntimeError: boom", finished_at=timezone.now())

    response = api.post(f"/tasks/{task.id}/retry")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["attempts"], body["finished_at"]) == ("pending", 0, None)
    assert parse_time(body["run_after"]) <= timezone.now()
    stored = Task.objects.get(id=task.id)
    assert (stored.status, stored.attempts) == (TaskStatus.PENDING, 0)
    assert stored.updated_at > task.updated_at


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.RUNNING, TaskStatus.DONE])
def test_retry__other_statuses_409_naming_the_status(api, status):
    task = make_task(status, attempts=1)
    before = table_snapshot()

    body = assert_json_error(api.post(f"/tasks/{task.id}/retry"), 409)

    assert body["status"] == status
    assert status in body["error"]
    assert table_snapshot() == before


def test_cancel__pending_becomes_cancelled(api):
    task = task_enqueue(type="noop")

    response = api.post(f"/tasks/{task.id}/cancel")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    parse_time(body["finished_at"])
    assert Task.objects.get(id=task.id).status == TaskStatus.CANCELLED


def test_cancel__running_is_asked_to_stop_and_keeps_running(api):
    task = make_task(TaskStatus.RUNNING, attempts=1, worker_id="w-1", started_at=timezone.now())

    response = api.post(f"/tasks/{task.id}/cancel")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "running"
    assert body["cancel_requested"] is True
    stored = Task.objects.get(id=task.id)
    assert (stored.status, stored.cancel_requested) == (TaskStatus.RUNNING, True)


@pytest.mark.parametrize("status", [TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.CANCELLED])
def test_cancel__finished_task_409_naming_the_status(api, status):
    task = make_task(status, finished_at=timezone.now())
    before = table_snapshot()

    body = assert_json_error(api.post(f"/tasks/{task.id}/cancel"), 409)

    assert body["status"] == status
    assert status in body["error"]
    assert table_snapshot() == before


@pytest.mark.parametrize("action", ["retry", "cancel"])
@pytest.mark.parametrize("task_id", [UNKNOWN_ID, "not-a-uuid"])
def test_transition__unknown_or_malformed_id_404_json(api, existing_task, action, task_id):
    before = table_snapshot()

    assert_json_error(api.post(f"/tasks/{task_id}/{action}"), 404)
    assert table_snapshot() == before


# Health, schema and docs


def test_health__ok_with_env_and_database(api):
    response = api.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "env": django_settings.ENV, "database": "ok"}


def _last_line_without_database(script: str) -> str:
    """Run `script` in another process whose DB_DSN names a port where no database listens.

    Another process, because this one's connection settings point at the working test database.
    """
    result = subprocess.run(
        [sys.executable, "-c", "import django, json; django.setup(); from django.test import Client; " + script],
        cwd=Path(__file__).resolve().parent.parent,
        env={
            "PATH": os.environ["PATH"],
            "DJANGO_SETTINGS_MODULE": "taskflow_project.settings",
            "DB_DSN": "postgres://nobody@127.0.0.1:9/nowhere",  # port 9 (discard): nothing listens
            "LOG_LEVEL": "ERROR",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_health__503_when_the_database_cannot_be_reached():
    line = _last_line_without_database("r = Client().get('/health'); print(r.status_code, json.dumps(r.json()))")

    status, body = line.split(" ", 1)
    assert status == "503"
    assert json.loads(body) == {"status": "unavailable", "env": "development", "database": "unavailable"}


def test_api__503_json_while_the_database_is_away():
    line = _last_line_without_database(
        "c = Client(); r = c.post('/tasks', {'type': 'noop'}, content_type='application/json'); "
        "g = c.get('/tasks'); print(r.status_code, g.status_code, r['Retry-After'], json.dumps(r.json()))"
    )

    post_status, get_status, retry_after, body = line.split(" ", 3)
    assert (post_status, get_status, retry_after) == ("503", "503", "1")
    assert json.loads(body) == {"error": "database unavailable; retry shortly"}


def test_schema__openapi_3_document_lists_the_task_paths(api):
    response = api.get("/api/schema/")

    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    assert {"get", "post"} <= set(paths["/tasks"])
    assert "get" in paths["/tasks/{task_id}"]
    assert "post" in paths["/tasks/{task_id}/retry"]
    assert "post" in paths["/tasks/{task_id}/cancel"]
    list_params = {p["name"] for p in paths["/tasks"]["get"]["parameters"]}
    assert {"status", "type", "queue", "limit", "cursor"} <= list_params


def test_docs__html_references_only_local_static_files(api):
    response = api.get("/api/docs/")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/html")
    html = response.content.decode()
    assert "http://" not in html
    assert "https://" not in html
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    scripts = re.findall(r'<script[^>]+src="([^"]+)"', html)
    assert scripts
    assert all(not ref.startswith("//") for ref in references)
    static = [ref for ref in references if ref.startswith(django_settings.STATIC_URL)]
    assert set(scripts) <= set(static)
    client = Client()
    for ref in static:  # served by WhiteNoise from the app itself
        asset = client.get(ref)
        assert asset.status_code == 200, ref
        assert b"".join(asset.streaming_content)
        asset.close()


# Anything a client can send: never a 5xx


def _odd_bodies() -> list[Any]:
    noop = {"type": "noop"}
    return [
        pytest.param(b"null", id="null"),
        pytest.param(b"0", id="zero"),
        pytest.param(b"-1.5e10", id="float"),
        pytest.param(b"1e400", id="float-overflow"),
        pytest.param(b"123456789012345678901234567890", id="huge-int"),
        pytest.param(b'"just a string"', id="string"),
        pytest.param(b"true", id="bool"),
        pytest.param(b"NaN", id="nan-literal"),
        pytest.param(b"Infinity", id="infinity-literal"),
        pytest.param(b'{"type": "noop", "payload": {"n": NaN}}', id="nan-in-payload"),
        pytest.param(b"[[[]]]", id="nested-arrays"),
        pytest.param(b"[" * 5000 + b"]" * 5000, id="very-deep-arrays"),
        pytest.param(b"[]", id="empty-array"),
        pytest.param(b"{}", id="empty-object"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b"   ", id="whitespace"),
        pytest.param(b"\x00", id="nul-byte"),
        pytest.param(b"\xef\xbb\xbf{}", id="utf8-bom"),
        pytest.param(b'{"type": "\\ud800"}', id="lone-surrogate"),
        pytest.param('{"type": "ノップ"}'.encode(), id="unicode-type"),
        pytest.param(json.dumps({**noop, "payload": {"😀": "שלום", "x": "e\u0301"}}).encode(), id="unicode-payload"),
        pytest.param(json.dumps({**noop, "payload": {"n": 2**64 - 1, "m": -(2**63)}}).encode(), id="int-64-bit"),
        pytest.param(b'{"type": "noop", "payload": {"n": 123456789012345678901234567890}}', id="huge-int-payload"),
        pytest.param(json.dumps({**noop, "priority": 10**30}).encode(), id="huge-priority"),
        pytest.param(json.dumps({**noop, "priority": 1e308}).encode(), id="float-priority"),
        pytest.param(json.dumps({**noop, "max_attempts": 10**30}).encode(), id="huge-max-attempts"),
        pytest.param(json.dumps({**noop, "max_attempts": True}).encode(), id="bool-max-attempts"),
        pytest.param(json.dumps({**noop, "delay": 1e308}).encode(), id="huge-delay"),
        pytest.param(json.dumps({**noop, "delay": "Infinity"}).encode(), id="infinite-delay-text"),
        pytest.param(json.dumps({**noop, "run_after": "0001-01-01T00:00:00+14:00"}).encode(), id="run-after-year-0"),
        pytest.param(json.dumps({**noop, "run_after": "9999-12-31T23:59:59-14:00"}).encode(), id="run-after-year-10k"),
        pytest.param(json.dumps({**noop, "run_after": 1700000000}).encode(), id="run-after-number"),
        pytest.param(json.dumps({**noop, "queue": None}).encode(), id="null-queue"),
        pytest.param(json.dumps({**noop, "queue": "q" * 51}).encode(), id="long-queue"),
        pytest.param(json.dumps({**noop, "idempotency_key": {"a": 1}}).encode(), id="object-idempotency-key"),
        pytest.param(json.dumps({**noop, "idempotency_key": "k" * 256}).encode(), id="long-idempotency-key"),
        pytest.param(json.dumps({"type": ["noop"]}).encode(), id="array-type"),
        pytest.param(json.dumps({"type": {"name": "noop"}}).encode(), id="object-type"),
        pytest.param(json.dumps({"type": 5}).encode(), id="number-type"),
        pytest.param(json.dumps({"type": "no\x00op"}).encode(), id="nul-in-type"),
        pytest.param(json.dumps({"type": "noop", "payload": {"a": ["\x00"]}}).encode(), id="nul-deep-in-payload"),
        pytest.param(
            b'{"type": "noop", "payload": ' + b'{"a": ' * 1000 + b"1" + b"}" * 1000 + b"}", id="payload-1000-deep"
        ),
        pytest.param(json.dumps([noop, None, 5, "x", [noop]]).encode(), id="batch-of-odd-items"),
        pytest.param(json.dumps([noop] * (django_settings.TASKFLOW["MAX_BATCH"] + 1)).encode(), id="batch-over-max"),
    ]


@pytest.mark.parametrize("raw", _odd_bodies())
def test_post_task__odd_body_never_5xx(raw):
    client = Client(raise_request_exception=False)
    rows_before = Task.objects.count()

    response = client.post("/tasks", raw, content_type="application/json")

    assert response.status_code < 500, response.content
    body = response.json()
    if response.status_code >= 400:
        assert isinstance(body["error"], str)
        assert Task.objects.count() == rows_before
    else:
        assert Task.objects.count() > rows_before


@pytest.mark.parametrize(
    "path",
    [
        "/tasks?limit=%EF%BC%95",
        "/tasks?type=" + "t" * 5000,
        "/tasks?status=&type=&queue=&cursor=",
        "/tasks?cursor=" + "A" * 4000,
        "/tasks/" + "9" * 5000,
        "/tasks/%00",
        "/tasks/%00/retry",
        "/health?x=%00",
    ],
)
def test_get__odd_query_never_5xx(path):
    response = Client(raise_request_exception=False).get(path)

    assert response.status_code < 500, response.content
    response.json()
