"""Handlers: the Python callables that do a task's work, looked up by the task's `type`.

A handler receives the payload's keys as keyword arguments and returns something JSON can
hold (stored as the task's `result`). Raising `PermanentError` fails the task at once;
any other exception is retried while attempts are left.

Register one with the decorator::

    from tasks.handlers import handler

    @handler("resize_image", max_attempts=5)
    def resize_image(*, path: str, width: int) -> dict: ...

or by dotted path in the `TASKFLOW_HANDLERS` environment variable
(`resize_image=myapp.jobs.resize_image`). Modules named `handlers` in installed apps are
imported at start-up, so their decorators run.
"""

import contextvars
import inspect
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.mail import send_mail
from django.utils.module_loading import import_string, module_has_submodule

from tasks.models import TYPE_MAX_LENGTH


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the task fails now."""


@dataclass(frozen=True, kw_only=True)
class Handler:
    name: str
    func: Callable[..., Any]
    # None: the task's own max_attempts (TASKFLOW["DEFAULT_MAX_ATTEMPTS"] unless set on submit).
    max_attempts: int | None = None
    signature: inspect.Signature = field(compare=False)

    def call(self, payload: dict[str, Any]) -> Any:
        """Run the handler with the payload's keys as keyword arguments."""
        try:
            return self.func(**payload)
        except TypeError:
            # The fit is checked only on failure: binding every call would cost more than
            # the calls. A payload that does not fit fails before the handler's body runs.
            self.bind(payload)  # PermanentError when the payload does not fit
            raise

    def bind(self, payload: dict[str, Any]) -> inspect.BoundArguments:
        """Match the payload to the handler's parameters; PermanentError when they do not fit."""
        try:
            return self.signature.bind(**payload)
        except TypeError as exc:
            raise PermanentError(f"payload does not fit handler {self.name!r}: {exc}") from None


class HandlerRegistry:
    def __init__(self) -> None:
        self._handlers: dict[str, Handler] = {}

    def register(self, name: str, func: Callable[..., Any], *, max_attempts: int | None = None) -> Handler:
        if not name or len(name) > TYPE_MAX_LENGTH:
            raise ImproperlyConfigured(f"Handler name must be 1..{TYPE_MAX_LENGTH} characters: {name!r}")
        if max_attempts is not None and max_attempts < 1:
            raise ImproperlyConfigured(f"Handler {name!r}: max_attempts must be at least 1")
        registered = Handler(
            name=name,
            func=func,
            max_attempts=max_attempts,
            signature=inspect.signature(func),
        )
        self._handlers[name] = registered
        return registered

    def unregister(self, name: str) -> None:
        self._handlers.pop(name, None)

    def get(self, name: str) -> Handler | None:
        return self._handlers.get(name)

    def names(self) -> list[str]:
        return sorted(self._handlers)

    def load(self) -> None:
        """Import every installed app's `handlers` module, then the TASKFLOW_HANDLERS setting."""
        for app_config in apps.get_app_configs():
            if module_has_submodule(app_config.module, "handlers"):
                import_module(f"{app_config.name}.handlers")
        for name, path in settings.TASKFLOW["HANDLERS"].items():
            try:
                func = import_string(path)
            except ImportError as exc:
                raise ImproperlyConfigured(f"TASKFLOW_HANDLERS: cannot import {path!r} for {name!r}: {exc}") from exc
            self.register(name, func)


registry = HandlerRegistry()


def handler(name: str, *, max_attempts: int | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated function as the handler of task type `name`."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        registry.register(name, func, max_attempts=max_attempts)
        return func

    return decorate


@dataclass(frozen=True, kw_only=True)
class TaskContext:
    """What a running handler may ask about its own task (see `current_task`)."""

    task_id: str
    type: str
    attempt: int
    max_attempts: int
    queue: str

    def cancel_requested(self) -> bool:
        """True once an operator asked to cancel this task (POST /tasks/{id}/cancel)."""
        from tasks.models import Task

        return Task.objects.filter(id=self.task_id, cancel_requested=True).exists()


_current_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("taskflow_task", default=None)


def current_task() -> TaskContext:
    """The task the calling handler is running; raises LookupError outside a handler."""
    context = _current_task.get()
    if context is None:
        raise LookupError("current_task() is only available inside a running handler")
    return context


# Built-in handlers: real work for the seed's examples, plus demo and benchmark helpers.


@handler("noop")
def noop(**payload: Any) -> None:
    """Do nothing: for tests and benchmarks."""


@handler("sleep")
def sleep(*, seconds: float = 1.0, **_ignored: Any) -> dict[str, float]:
    """Sleep, checking for cancellation every 100 ms; the seed's simulated work, made honest."""
    if not isinstance(seconds, int | float) or not 0 <= seconds <= 3600:
        raise PermanentError("seconds must be a number from 0 to 3600")
    deadline = time.monotonic() + seconds
    context = _current_task.get()
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        if context is not None and left > 0.1 and context.cancel_requested():
            raise PermanentError("cancelled while sleeping")
    return {"slept": seconds}


@handler("email")
def email(
    *,
    to: str | list[str],
    subject: str = "",
    body: str = "",
    from_email: str | None = None,
    **_ignored: Any,
) -> dict[str, int]:
    """Send an email through Django's mail framework (EMAIL_URL)."""
    recipients = [to] if isinstance(to, str) else to
    if not recipients or not all(isinstance(r, str) and "@" in r for r in recipients):
        raise PermanentError("'to' must be an email address or a list of them")
    sent = send_mail(str(subject), str(body), from_email, recipients)
    return {"sent": sent}


WEBHOOK_TIMEOUT_SECONDS = 10.0


@handler("webhook")
def webhook(
    *,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = WEBHOOK_TIMEOUT_SECONDS,
) -> dict[str, Any]:
    """POST `body` as JSON to `url`; network errors and 5xx are retried, 4xx fails at once."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PermanentError("url must be an http:// or https:// URL")
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "TaskFlow",
            **(headers or {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked above
            return {"status": response.status}
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code == 429:
            raise  # retried
        raise PermanentError(f"{url} answered {exc.code}") from exc
