"""services.common.logs: JSON and text lines, the job a record is about, trace ids, and
which format LOG_FORMAT=auto chooses."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider

from services.common.errors import ConfigError
from services.common.logs import (
    ContextFilter,
    JsonFormatter,
    TextFormatter,
    bind_job,
    current_job_id,
    job_context,
    resolve_format,
)
from services.common.settings import Settings

JOB = "job_" + "ab" * 16
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
Logged = tuple[logging.Logger, io.StringIO, "logging.StreamHandler[io.StringIO]"]


@pytest.fixture
def logged() -> Iterator[Logged]:
    """A logger writing through the services' filter to a buffer (formatter set by each
    test)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.unit.test_logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        yield logger, out, handler
    finally:
        logger.handlers.clear()


def json_lines(out: io.StringIO) -> list[dict[str, str]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_json_line_parses_and_holds_the_fields(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(JsonFormatter("jobs"))
    with job_context(JOB):
        logger.warning("job %s failed: %s", JOB, 'hunter: "bad"\nkey', extra={"provider": "hunter"})
    (line,) = json_lines(out)
    assert TIME.match(line["time"]), line
    assert line["level"] == "WARNING" and line["service"] == "jobs"
    assert line["logger"] == "tests.unit.test_logs"
    assert line["message"] == f'job {JOB} failed: hunter: "bad"\nkey'
    assert line["job_id"] == JOB and line["provider"] == "hunter"
    assert "error" not in line and "trace_id" not in line and "span_id" not in line


def test_keys_not_known_are_left_out(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(JsonFormatter("discovery"))
    logger.info("providers: places=sandbox")
    (line,) = json_lines(out)
    assert set(line) == {"time", "level", "service", "logger", "message"}


def test_an_exception_gives_its_class_and_stack(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(JsonFormatter("enrichment"))
    try:
        raise KeyError("x")
    except KeyError:
        logger.exception("task failed unexpectedly")
    (line,) = json_lines(out)
    assert line["error"] == "KeyError" and line["level"] == "ERROR"
    assert "Traceback" in line["stack"] and "KeyError" in line["stack"]
    assert line["message"] == "task failed unexpectedly"


def test_a_current_span_gives_its_trace_and_span_ids(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(JsonFormatter("jobs"))
    tracer = TracerProvider().get_tracer("tests")
    with tracer.start_as_current_span("apply") as span:
        logger.info("inside")
    logger.info("outside")
    inside, outside = json_lines(out)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert len(inside["trace_id"]) == 32 and len(inside["span_id"]) == 16
    assert "trace_id" not in outside and "span_id" not in outside


def test_the_job_comes_from_the_context_or_from_extra(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(JsonFormatter("jobs"))
    other = "job_" + "cd" * 16
    with job_context(JOB):
        logger.info("bound")
        logger.info("named", extra={"job_id": other})
        with job_context(""):
            logger.info("empty id changes nothing")
    logger.info("after")
    lines = json_lines(out)
    assert [line.get("job_id") for line in lines] == [JOB, other, JOB, None]
    assert current_job_id() == ""


async def test_each_asyncio_task_keeps_its_own_job() -> None:
    async def work(job_id: str) -> str:
        bind_job(job_id)
        await asyncio.sleep(0.01)
        return current_job_id()

    jobs = [f"job_{n:032x}" for n in range(5)]
    assert await asyncio.gather(*(work(j) for j in jobs)) == jobs
    assert current_job_id() == ""


def test_a_text_line_names_the_job_when_known(logged: Logged) -> None:
    logger, out, handler = logged
    handler.setFormatter(TextFormatter("jobs"))
    logger.info("jobs ready on 127.0.0.1:50051")
    with job_context(JOB):
        logger.info("report applied")
    first, second = out.getvalue().splitlines()
    assert first.endswith(" INFO jobs tests.unit.test_logs: jobs ready on 127.0.0.1:50051")
    assert second.endswith(f" INFO jobs tests.unit.test_logs: report applied job={JOB}")


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_auto_is_text_on_a_terminal_and_json_in_a_container(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("services.common.logs._CONTAINER_MARKERS", (str(tmp_path / "none"),))
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}
    assert resolve_format("auto", _Stream(tty=True), pod) == "text"
    assert resolve_format("auto", _Stream(tty=False), pod) == "json"
    assert resolve_format("auto", _Stream(tty=False), {}) == "text"
    marker = tmp_path / ".dockerenv"
    marker.touch()
    monkeypatch.setattr("services.common.logs._CONTAINER_MARKERS", (str(marker),))
    assert resolve_format("auto", _Stream(tty=False), {}) == "json"
    assert resolve_format("text", _Stream(tty=False), pod) == "text"
    assert resolve_format("json", _Stream(tty=True), {}) == "json"


def test_log_format_must_be_one_of_three() -> None:
    assert Settings.from_env({"LOG_FORMAT": "json"}).log_format == "json"
    assert Settings.from_env({}).log_format == "auto"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": "yaml"})
