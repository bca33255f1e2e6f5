import json
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import BaseParser

READ_CHUNK_BYTES = 64 * 1024


class RequestTooLarge(APIException):
    status_code = 413
    default_code = "request_too_large"


class LimitedJSONParser(BaseParser):
    """JSON bodies up to TASKFLOW['MAX_BODY_BYTES']; larger ones are a 413 before they are read whole."""

    media_type = "application/json"

    def parse(
        self,
        stream: Any,
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        limit = settings.TASKFLOW["MAX_BODY_BYTES"]
        too_large = RequestTooLarge(f"request body is larger than {limit} bytes")
        request = (parser_context or {}).get("request")
        declared = request.META.get("CONTENT_LENGTH") if request is not None else None
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise too_large
        chunks, size = [], 0
        while chunk := stream.read(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
        try:
            # The standard library, not orjson: it keeps integers of any size exact.
            return json.loads(b"".join(chunks), parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ParseError(f"malformed JSON: {exc}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
