"""The observability scenario's trace collector: an OTLP/HTTP receiver that accepts and counts.

``python -m bench.otlp_sink`` listens on 127.0.0.1 (a free port), prints its base URL (for
``OTEL_EXPORTER_OTLP_ENDPOINT``) as its first line, and answers ``POST /v1/traces`` as
``tests/fakes/otlp_receiver.py`` does (protobuf ``ExportTraceServiceRequest``, gzip or not,
HTTP/1.1 keep-alive like a collector), keeping only counts: requests, bytes and spans by
service and span name (``GET /stats``, JSON). Unlike the tests' receiver it builds no
object per span, and it runs as a process of its own so that receiving thousands of spans a
second takes nothing from the bench's event loop (its CPU is sampled apart).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from bench.config import log
from services.cli.stack import REPO_ROOT


class _Counts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.bad = 0
        self.bytes = 0
        self.spans: Counter[tuple[str, str]] = Counter()  # (service, span name) -> spans

    def as_json(self) -> bytes:
        with self.lock:
            spans: dict[str, dict[str, int]] = {}
            for (service, name), n in self.spans.items():
                spans.setdefault(service, {})[name] = n
            data = {"requests": self.requests, "bad": self.bad, "bytes": self.bytes}
            return json.dumps({**data, "spans": spans}).encode()


def _count(body: bytes) -> Counter[tuple[str, str]]:
    """Spans of one export by (service.name, span name); parsing stays in protobuf's C
    code but for one attribute read a span."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    counts: Counter[tuple[str, str]] = Counter()
    for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans:
        service = next(
            (
                a.value.string_value
                for a in resource_spans.resource.attributes
                if a.key == "service.name"
            ),
            "",
        )
        for scope_spans in resource_spans.scope_spans:
            counts.update((service, span.name) for span in scope_spans.spans)
    return counts


def serve() -> None:
    counts = _Counts()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the exporter reuses its connection

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                if self.path != "/v1/traces":
                    raise ValueError(self.path)
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                spans = _count(body)
            except Exception:
                with counts.lock:
                    counts.requests += 1
                    counts.bad += 1
                self._answer(400, b"", "text/plain")
                return
            with counts.lock:
                counts.requests += 1
                counts.bytes += len(body)
                counts.spans.update(spans)
            # An empty ExportTraceServiceResponse: zero bytes of protobuf.
            self._answer(200, b"", "application/x-protobuf")

        def do_GET(self) -> None:
            self._answer(200, counts.as_json(), "application/json")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    print(f"http://{host!s}:{port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


@dataclass
class SinkStats:
    requests: int = 0
    bad: int = 0
    bytes: int = 0
    spans: dict[str, dict[str, int]] = field(default_factory=dict)  # service -> name -> n

    @property
    def total(self) -> int:
        return sum(sum(names.values()) for names in self.spans.values())

    def by_service(self) -> dict[str, int]:
        return {service: sum(names.values()) for service, names in self.spans.items()}


class OtlpSink:
    """:func:`serve` as a child process (killed by :meth:`aclose`)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self.endpoint = ""

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.otlp_sink",
            stdout=asyncio.subprocess.PIPE, cwd=REPO_ROOT,
        )  # fmt: skip
        assert self._proc.stdout is not None
        line = await asyncio.wait_for(self._proc.stdout.readline(), 30)
        self.endpoint = line.decode().strip()
        if not self.endpoint.startswith("http://"):
            raise RuntimeError(f"bench.otlp_sink did not start (said {line!r})")
        log(f"OTLP receiver on {self.endpoint}")

    async def stats(self) -> SinkStats:
        def get() -> bytes:
            import urllib.request

            with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=10) as answer:
                return bytes(answer.read())

        data = json.loads(await asyncio.to_thread(get))
        return SinkStats(data["requests"], data["bad"], data["bytes"], data["spans"])

    async def aclose(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


if __name__ == "__main__":
    serve()
