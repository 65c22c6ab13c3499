"""Logging set-up shared by the services: one line per record on stderr, as text for people
or as JSON for a log pipeline (``LOG_FORMAT``).

Every line about a job says which: code doing one job's work runs inside
:func:`job_context` (an asyncio task copies the context it was created in, so a job bound
inside a task's coroutine stays with that task), and each record is stamped with the job
and, when an OpenTelemetry span is current, its trace and span ids.

JSON lines (``LOG_FORMAT=json``) hold ``time`` (RFC 3339, UTC, milliseconds), ``level``,
``service``, ``logger``, ``message``; ``job_id``, ``provider``, ``trace_id`` and
``span_id`` when known (the key is left out otherwise); ``error``, the class of the
exception the record carries (with its ``stack``) or the one a call named in ``extra``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from opentelemetry import trace

# Start-up and shutdown lines ("jobs ready on ...") are logged whatever LOG_LEVEL says:
# launchers and operators wait for them.
lifecycle = logging.getLogger("prospect.lifecycle")

LOG_FORMATS = ("auto", "json", "text")
# Files a container runtime leaves at the root of the file system (Docker, Podman).
_CONTAINER_MARKERS = ("/.dockerenv", "/run/.containerenv")
_job_id: ContextVar[str] = ContextVar("prospect_job_id", default="")


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Every record logged inside names ``job_id`` (an empty id changes nothing)."""
    if not job_id:
        yield
        return
    token = _job_id.set(job_id)
    try:
        yield
    finally:
        _job_id.reset(token)


def bind_job(job_id: str) -> None:
    """Every record logged from now on in this asyncio task (its own copy of the context)
    names ``job_id``, errors on the way out of the task included: for a task that works
    for one job from here to its end."""
    _job_id.set(job_id)


def current_job_id() -> str:
    """The job the code running now works for, "" when none."""
    return _job_id.get()


class ContextFilter(logging.Filter):
    """Stamps each record with the job (unless ``extra`` named one) and the current span's
    trace and span ids, in the logging thread, where the context is the caller's."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", ""):
            record.job_id = _job_id.get()
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <service> <logger>: <message> job=<id>`` (the job when known)."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s%(job)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        job_id = getattr(record, "job_id", "")
        record.job = f" job={job_id}" if job_id else ""
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object a line (see the module's docstring for its keys)."""

    # Record attributes copied when set (by ContextFilter or a call's ``extra``).
    OPTIONAL = ("job_id", "provider", "trace_id", "span_id", "error")

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in self.OPTIONAL:
            value = getattr(record, key, "")
            if value:
                line[key] = str(value)
        if record.exc_info and record.exc_info[0] is not None:
            line["error"] = record.exc_info[0].__name__
            line["stack"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def in_container(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process runs in a container: on Kubernetes (KUBERNETES_SERVICE_HOST,
    which the kubelet sets in every pod), or under a runtime that leaves its marker file
    (Docker's /.dockerenv, Podman's /run/.containerenv)."""
    env = os.environ if environ is None else environ
    if env.get("KUBERNETES_SERVICE_HOST"):
        return True
    return any(os.path.exists(marker) for marker in _CONTAINER_MARKERS)


def resolve_format(
    log_format: str, stream: TextIO, environ: Mapping[str, str] | None = None
) -> str:
    """``json`` or ``text`` for ``LOG_FORMAT``: ``auto`` is text when ``stream`` is a
    terminal, else json in a container, else text."""
    if log_format != "auto":
        return log_format
    if stream.isatty():
        return "text"
    return "json" if in_container(environ) else "text"


def formatter_for(log_format: str, service: str) -> logging.Formatter:
    """The formatter of ``log_format`` (json or text) for ``service``."""
    if log_format == "json":
        return JsonFormatter(service)
    return TextFormatter(service)


def setup_logging(level: str, service: str, log_format: str = "auto") -> None:
    """Log records of ``level`` and above to stderr in ``log_format`` (LOG_FORMAT: auto,
    json or text), each line naming ``service``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter_for(resolve_format(log_format, sys.stderr), service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    lifecycle.setLevel(logging.INFO)
    # Python's warnings become records too: a JSON log has no line of another shape.
    logging.captureWarnings(True)
    # nats.py logs every reconnect attempt at ERROR; ours are enough.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
