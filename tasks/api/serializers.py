import datetime
import re
from typing import Any

from django.conf import settings
from django.utils import timezone
from rest_framework import serializers

from tasks.handlers import PermanentError, registry
from tasks.models import (
    PRIORITY_MAX,
    PRIORITY_MIN,
    QUEUE_MAX_LENGTH,
    TYPE_MAX_LENGTH,
    Task,
)
from tasks.services import TaskSpec

QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")
MAX_DELAY_SECONDS = 366 * 24 * 3600  # a year: anything longer is almost surely a unit mistake
MAX_ATTEMPTS_LIMIT = 100


class TaskSerializer(serializers.ModelSerializer[Task]):
    """A task as the API returns it."""

    class Meta:
        model = Task
        fields = [
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
            "errors",
            "cancel_requested",
            "worker_id",
        ]
        read_only_fields = fields


class TaskCreateSerializer(serializers.Serializer[TaskSpec]):
    """One task to enqueue, as POST /tasks accepts it (alone or in an array)."""

    type = serializers.CharField(max_length=TYPE_MAX_LENGTH, trim_whitespace=False)
    payload = serializers.JSONField(required=False, default=dict)
    queue = serializers.CharField(max_length=QUEUE_MAX_LENGTH, required=False, default="default")
    priority = serializers.IntegerField(min_value=PRIORITY_MIN, max_value=PRIORITY_MAX, required=False, default=0)
    run_after = serializers.DateTimeField(required=False, help_text="RFC 3339; not before this time")
    delay = serializers.FloatField(
        min_value=0,
        max_value=MAX_DELAY_SECONDS,
        required=False,
        help_text="seconds from now",
    )
    max_attempts = serializers.IntegerField(min_value=1, max_value=MAX_ATTEMPTS_LIMIT, required=False)
    idempotency_key = serializers.CharField(max_length=255, required=False)

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, dict):
            raise serializers.ValidationError({"non_field_errors": ["each task must be a JSON object"]})
        unknown = sorted(set(data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({name: ["unknown field"] for name in unknown})
        return super().to_internal_value(data)

    def validate_type(self, value: str) -> str:
        if registry.get(value) is None:
            raise serializers.ValidationError(
                f"no handler for type {value!r}; known types: {', '.join(registry.names())}"
            )
        return value

    def validate_payload(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serializers.ValidationError("payload must be a JSON object")
        problem = unstorable_json(value)
        if problem:
            raise serializers.ValidationError(f"payload cannot be stored: {problem}")
        return value

    def validate_queue(self, value: str) -> str:
        if not QUEUE_NAME.match(value):
            raise serializers.ValidationError("queue may hold letters, digits, '_', '-', '.' and ':' only")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if "run_after" in attrs and "delay" in attrs:
            raise serializers.ValidationError({"delay": ["give run_after or delay, not both"]})
        handler = registry.get(attrs["type"])
        if handler is not None:
            # The worker would fail such a task on its first attempt; say so now instead.
            try:
                handler.bind(attrs["payload"])
            except PermanentError as exc:
                raise serializers.ValidationError({"payload": [str(exc)]}) from None
        return attrs

    def to_spec(self, attrs: dict[str, Any], *, header_key: str | None = None) -> TaskSpec:
        run_after: datetime.datetime | None = attrs.get("run_after")
        if "delay" in attrs:
            run_after = timezone.now() + datetime.timedelta(seconds=attrs["delay"])
        return TaskSpec(
            type=attrs["type"],
            payload=attrs["payload"],
            queue=attrs["queue"],
            priority=attrs["priority"],
            run_after=run_after,
            max_attempts=attrs.get("max_attempts"),
            idempotency_key=attrs.get("idempotency_key") or header_key,
        )


MAX_PAYLOAD_DEPTH = 100  # nesting levels; SQLite's JSON functions refuse deeper documents


def unstorable_json(value: Any) -> str | None:
    """Why both databases could not store this parsed JSON value, or None if they can.

    PostgreSQL's jsonb cannot hold U+0000 nor lone surrogates (not UTF-8); SQLite's JSON
    check refuses very deep nesting. One contract for both databases.
    """
    # Iterative: a body may nest deeper than Python's recursion limit.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"nested deeper than {MAX_PAYLOAD_DEPTH} levels"
        if isinstance(item, str):
            if "\x00" in item:
                return "strings and keys cannot contain \\u0000"
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return "strings and keys cannot contain lone surrogates (\\ud800-\\udfff)"
        elif isinstance(item, dict):
            stack.extend((key, depth) for key in item)
            stack.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, depth + 1) for child in item)
    return None


def max_batch() -> int:
    return int(settings.TASKFLOW["MAX_BATCH"])
