import re
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers, status
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import services
from tasks.api.errors import Conflict, LengthRequired, error_body
from tasks.api.serializers import TaskCreateSerializer, TaskSerializer, max_batch
from tasks.models import Task, TaskStatus
from tasks.selectors import InvalidCursor, TaskFilters, task_list

LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
LIST_PARAMS = {"status", "type", "queue", "limit", "cursor"}
LIMIT_DIGITS = re.compile(r"[0-9]{1,4}")  # ASCII only: str.isdigit() also passes "²", which int() rejects
IDEMPOTENCY_KEY = serializers.CharField(max_length=255)  # the body's idempotency_key rules, for the header

ERROR = inline_serializer("Error", {"error": serializers.CharField()})


def health(request: HttpRequest) -> JsonResponse:
    """200 when the database answers, 503 when it does not."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        database = "ok"
    except DatabaseError:
        database = "unavailable"
        connection.close_if_unusable_or_obsolete()
    body = {
        "status": "ok" if database == "ok" else "unavailable",
        "env": settings.ENV,
        "database": database,
    }
    return JsonResponse(body, status=200 if database == "ok" else 503)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return JsonResponse(error_body(f"no such path: {request.path}"), status=404)


def server_error(request: HttpRequest) -> HttpResponse:
    return JsonResponse(error_body("internal error; it has been logged"), status=500)


def _parse_id(task_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(task_id)
    except ValueError:
        raise NotFound(f"no task {task_id!r}: not a task id") from None


class TaskListCreateView(APIView):
    @extend_schema(
        summary="Enqueue a task, or a batch of tasks (JSON array)",
        request=TaskCreateSerializer,
        parameters=[OpenApiParameter("Idempotency-Key", OpenApiTypes.STR, OpenApiParameter.HEADER)],
        responses={
            201: TaskSerializer,
            200: OpenApiResponse(
                TaskSerializer,
                description="idempotency key seen before: the stored task",
            ),
            400: ERROR,
            411: ERROR,
            413: ERROR,
            415: ERROR,
        },
    )
    def post(self, request: Request) -> Response:
        if "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            raise LengthRequired()
        data = request.data
        header_key = request.headers.get("Idempotency-Key") or None
        if isinstance(data, list):
            if header_key:
                raise ValidationError(error_body("Idempotency-Key applies to one task; give idempotency_key per item"))
            if not 1 <= len(data) <= max_batch():
                raise ValidationError(error_body(f"a batch holds 1 to {max_batch()} tasks, not {len(data)}"))
            specs, item_errors = [], {}
            # One serializer for every item: building one per item copies its fields each time.
            serializer = TaskCreateSerializer()
            for index, item in enumerate(data):
                try:
                    specs.append(serializer.to_spec(serializer.run_validation(item)))
                except ValidationError as exc:
                    item_errors[str(index)] = exc.detail
            if item_errors:
                raise ValidationError(error_body("invalid tasks in batch; none was enqueued", items=item_errors))
            results = services.task_enqueue_many(specs=specs)
            return Response(
                TaskSerializer([t for t, _ in results], many=True).data,
                status=status.HTTP_201_CREATED,
            )
        if not isinstance(data, dict):
            raise ValidationError(error_body("body must be a JSON object, or an array of them"))
        if header_key is not None:
            try:
                header_key = IDEMPOTENCY_KEY.run_validation(header_key)
            except ValidationError as exc:
                raise ValidationError(
                    error_body("invalid Idempotency-Key header", fields={"Idempotency-Key": exc.detail})
                ) from None
        serializer = TaskCreateSerializer(data=data)
        serializer.is_valid(raise_exception=True)
        [(task, created)] = services.task_enqueue_many(
            specs=[serializer.to_spec(serializer.validated_data, header_key=header_key)]
        )
        return Response(
            TaskSerializer(task).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        summary="List tasks, newest first",
        parameters=[
            OpenApiParameter("status", OpenApiTypes.STR, enum=TaskStatus.values),
            OpenApiParameter("type", OpenApiTypes.STR),
            OpenApiParameter("queue", OpenApiTypes.STR),
            OpenApiParameter(
                "limit",
                OpenApiTypes.INT,
                description=f"1..{LIST_MAX_LIMIT}, default {LIST_DEFAULT_LIMIT}",
            ),
            OpenApiParameter("cursor", OpenApiTypes.STR, description="from the Link rel=next header"),
        ],
        responses={200: TaskSerializer(many=True), 400: ERROR},
    )
    def get(self, request: Request) -> Response:
        params = request.query_params
        unknown = sorted(set(params) - LIST_PARAMS)
        if unknown:
            raise ValidationError(error_body(f"unknown query parameters: {', '.join(unknown)}"))
        if any("\x00" in value for value in params.values()):
            # PostgreSQL text cannot hold NUL: filtering on one would be a database error.
            raise ValidationError(error_body("query parameters cannot contain NUL characters"))
        status_filter = params.get("status") or None
        if status_filter is not None and status_filter not in TaskStatus.values:
            raise ValidationError(error_body(f"status must be one of: {', '.join(TaskStatus.values)}"))
        raw_limit = params.get("limit", str(LIST_DEFAULT_LIMIT))
        if not LIMIT_DIGITS.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= LIST_MAX_LIMIT:
            raise ValidationError(error_body(f"limit must be a whole number from 1 to {LIST_MAX_LIMIT}"))
        limit = int(raw_limit)
        filters = TaskFilters(
            status=status_filter,
            type=params.get("type") or None,
            queue=params.get("queue") or None,
        )
        try:
            page, next_cursor = task_list(filters=filters, limit=limit, cursor=params.get("cursor") or None)
        except InvalidCursor as exc:
            raise ValidationError(error_body(str(exc))) from None
        response = Response(TaskSerializer(page, many=True).data)
        if next_cursor:
            query: dict[str, Any] = {k: v for k, v in params.items() if k != "cursor"}
            query["cursor"] = next_cursor
            url = request.build_absolute_uri(f"{request.path}?{urlencode(query)}")
            response["Link"] = f'<{url}>; rel="next"'
        return response


class TaskDetailView(APIView):
    @extend_schema(summary="One task", responses={200: TaskSerializer, 404: ERROR})
    def get(self, request: Request, task_id: str) -> Response:
        try:
            task = Task.objects.get(id=_parse_id(task_id))
        except Task.DoesNotExist:
            raise NotFound(f"no task {task_id}") from None
        return Response(TaskSerializer(task).data)


def _transition(service: Callable[..., Task], task_id: str) -> Response:
    try:
        task = service(task_id=_parse_id(task_id))
    except services.TaskNotFound:
        raise NotFound(f"no task {task_id}") from None
    except services.TransitionNotAllowed as exc:
        raise Conflict(str(exc), task_status=exc.task.status) from None
    return Response(TaskSerializer(task).data)


class TaskRetryView(APIView):
    @extend_schema(
        summary="Retry a failed or cancelled task",
        request=None,
        responses={200: TaskSerializer, 404: ERROR, 409: ERROR},
    )
    def post(self, request: Request, task_id: str) -> Response:
        return _transition(services.task_retry, task_id)


class TaskCancelView(APIView):
    @extend_schema(
        summary="Cancel a pending task, or ask a running one to stop",
        request=None,
        responses={200: TaskSerializer, 404: ERROR, 409: ERROR},
    )
    def post(self, request: Request, task_id: str) -> Response:
        return _transition(services.task_cancel, task_id)
