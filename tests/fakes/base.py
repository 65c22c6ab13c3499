"""The shared machinery of the fake provider servers.

A :class:`FakeServer` is a real HTTP server on 127.0.0.1 (a free port) run by
:class:`http.server.ThreadingHTTPServer` in a daemon thread, so code in this process or in
worker processes talks to it over real sockets. Subclasses speak one provider's wire format
(:meth:`FakeServer.handle`, :meth:`FakeServer.fault_reply`). Shared here: the record of every
request and of every successful operation with its price (integer micro-dollars, so sums
are exact); fault injection; a token-bucket rate limit answered with the provider's own
rate-limit response; a latency applied to every request. Faults and rate-limit answers are
never billed.

Each request is recorded, delayed by ``latency_s``, checked against the rate limit, then
against the injected faults, then answered. A "slow" fault only delays the normal answer,
which is billed like any other: a real provider charges for work it did even when the
client had given up waiting. One lock guards everything mutable.

For fault injection, :meth:`FakeServer.hold` freezes the answers: every request is still
recorded and billed, but its handler waits before answering until :meth:`FakeServer.release`.
With the fakes held and quiet (:meth:`FakeServer.wait_quiet`), every task of a worker is
either blocked inside a request the provider has billed or has not reached a provider: a
``kill -9`` then leaves no call half-made, so a job's cost stays exactly predictable.

For chaos tests, which kill at any moment instead: every request carries the caller's TCP
port and a sequence number, :meth:`FakeServer.in_flight` lists the requests read but not yet
answered, :meth:`FakeServer.answered_at` says when an answer went out, and every bill names
its request and what it bought (``Bill.subject``), so a test can tell which process had
which calls under way when it died and which purchases were made twice.
"""

from __future__ import annotations

import json
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

MICROS_PER_USD = 1_000_000
_TEXT = {"Content-Type": "text/plain; charset=UTF-8"}

FAULT_KINDS = frozenset(
    {"server_error", "rate_limit", "malformed", "slow", "bad_key", "credits_exhausted"}
)


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as received. ``headers`` keys are lower-case; ``query`` keeps the last
    value of a repeated parameter; ``path`` has no query string."""

    ts: float  # time.monotonic() when the request was read
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client_port: int = 0  # the caller's TCP port: tells which process sent the request
    seq: int = 0  # 1, 2, ... in arrival order, per fake (see FakeServer.answered_at)

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")


@dataclass(frozen=True, slots=True)
class Bill:
    """One successful operation and its price (0.0 for operations the provider gives away)."""

    ts: float
    operation: str
    price_usd: float
    job_key: str  # the job (text query) the billed data belongs to; "" when unknown
    price_micros: int = 0
    subject: str = ""  # what was bought: "domain:<domain>", "email:<address>", ...
    request_seq: int = 0  # RequestRecord.seq of the request billed (0: billed outside one)


@dataclass(slots=True)
class Reply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> Reply:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Reply(
        status, body, {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
    )


def truncated_json_reply(payload: Any) -> Reply:
    """A 200 whose JSON body is cut off half-way: what a dropped proxy stream looks like."""
    body = json.dumps(payload).encode()
    return Reply(200, body[: max(1, len(body) // 2)], {"Content-Type": "application/json"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: bursts from several worker processes


class FakeServer:
    """Base class of the three fake providers; see the module docstring."""

    name: ClassVar[str] = "fake"  # provider name, e.g. "google_places"
    key_prefix: ClassVar[str] = "fk"  # generated keys look like "<prefix>-test-<hex>"
    fault_kinds: ClassVar[frozenset[str]] = FAULT_KINDS

    def __init__(
        self, api_key: str | None = None, *, latency_s: float = 0.0, slow_s: float = 3.0
    ) -> None:
        self.api_key = api_key or f"{self.key_prefix}-test-{secrets.token_hex(16)}"
        self.latency_s = latency_s
        self.slow_s = slow_s
        self._lock = threading.Lock()
        self._requests: list[RequestRecord] = []
        self._operations: list[Bill] = []
        self._faults: list[str] = []
        self._rate: tuple[float, int] | None = None
        self._tokens = 0.0
        self._refilled_at = 0.0
        self._rate_limited = 0
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._released = threading.Event()  # clear while held (see hold())
        self._released.set()
        self._held = 0
        self._last_request_at = 0.0
        self._seq = 0
        self._open: dict[int, RequestRecord] = {}  # by seq: read, answer not yet written
        self._answered: dict[int, float] = {}  # seq -> time.monotonic() the answer was sent
        self._current = threading.local()  # the request a handler thread is billing for

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = server = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        self.release()  # let held handlers answer and end
        server.shutdown()
        server.server_close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:  # idle keep-alive connections: let their threads end now
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> FakeServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"fake {self.name} is not started")
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``, no trailing slash."""
        return f"http://127.0.0.1:{self.port}"

    # -- records ---------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        with self._lock:
            return list(self._requests)

    @property
    def operations(self) -> list[Bill]:
        """Every successful operation, including those priced at $0."""
        with self._lock:
            return list(self._operations)

    @property
    def billed(self) -> list[Bill]:
        """The operations that cost money."""
        with self._lock:
            return [b for b in self._operations if b.price_micros > 0]

    def calls(self, operation: str) -> int:
        """How many requests for ``operation`` succeeded (billed or free)."""
        with self._lock:
            return sum(1 for b in self._operations if b.operation == operation)

    def bill_for(self, job_key: str) -> float:
        with self._lock:
            micros = sum(b.price_micros for b in self._operations if b.job_key == job_key)
        return micros / MICROS_PER_USD

    def total_billed(self) -> float:
        with self._lock:
            micros = sum(b.price_micros for b in self._operations)
        return micros / MICROS_PER_USD

    def job_of_request(self, req: RequestRecord) -> str:
        """The job key (text query) ``req`` was made for, "" when unknown; per provider."""
        return ""

    def requests_for(self, job_key: str) -> list[RequestRecord]:
        """Every request received for ``job_key`` (billed or not: faults included)."""
        return [r for r in self.requests if self.job_of_request(r) == job_key]

    def max_requests_in_window(self, window_s: float = 1.0) -> int:
        """The most requests received within any span shorter than ``window_s`` seconds."""
        with self._lock:
            stamps = sorted(r.ts for r in self._requests)
        best = start = 0
        for end, ts in enumerate(stamps):
            while ts - stamps[start] >= window_s:
                start += 1
            best = max(best, end - start + 1)
        return best

    def in_flight(self) -> list[RequestRecord]:
        """Requests received whose answer has not been written yet (held ones included)."""
        with self._lock:
            return list(self._open.values())

    def answered_at(self, seq: int) -> float | None:
        """``time.monotonic()`` when the answer to request ``seq`` was written (or the write
        failed); None while it is in flight."""
        with self._lock:
            return self._answered.get(seq)

    def reset(self) -> None:
        """Forget requests, operations, pending faults and the rate-limit count."""
        with self._lock:
            self._requests.clear()
            self._operations.clear()
            self._answered.clear()
            self._faults.clear()
            self._rate_limited = 0

    # -- faults and limits -----------------------------------------------------------------

    def fail_next(self, n: int, kind: str) -> None:
        """Answer the next ``n`` requests with fault ``kind`` (see :attr:`fault_kinds`)."""
        if kind not in self.fault_kinds:
            raise ValueError(f"unknown fault {kind!r} for {self.name}: {sorted(self.fault_kinds)}")
        with self._lock:
            self._faults.extend([kind] * n)

    def set_rate_limit(self, rps: float, burst: int) -> None:
        """Enforce ``rps`` requests per second with bursts of ``burst`` (a token bucket
        starting full); requests above it get the provider's rate-limit answer."""
        if rps <= 0 or burst < 1:
            raise ValueError("rps must be > 0 and burst >= 1")
        with self._lock:
            self._rate = (rps, burst)
            self._tokens = float(burst)
            self._refilled_at = time.monotonic()

    def clear_rate_limit(self) -> None:
        with self._lock:
            self._rate = None

    @property
    def rate_limited(self) -> int:
        """How many requests got the provider's rate-limit answer from the token bucket."""
        with self._lock:
            return self._rate_limited

    # -- holding answers (fault injection) ------------------------------------------------

    def hold(self) -> None:
        """From now on, each request is recorded and billed as usual, but its handler waits
        before answering until :meth:`release` (or :meth:`stop`)."""
        self._released.clear()

    def release(self) -> None:
        """Let every held request answer; new requests are answered at once again."""
        self._released.set()

    @property
    def holding(self) -> bool:
        return not self._released.is_set()

    def held_count(self) -> int:
        """How many requests are waiting for :meth:`release` right now."""
        with self._lock:
            return self._held

    def last_request_at(self) -> float:
        """``time.monotonic()`` when the latest request arrived (0.0 before any)."""
        with self._lock:
            return self._last_request_at

    def wait_quiet(self, quiet_s: float = 0.3, timeout: float = 10.0) -> bool:
        """Block until no new request has arrived for ``quiet_s`` seconds (counted from this
        call at the earliest). True when quiet, False when ``timeout`` ran out first."""
        return wait_quiet([self], quiet_s, timeout)

    # -- for subclasses --------------------------------------------------------------------

    def handle(self, req: RequestRecord) -> Reply:
        """The provider's answer to ``req`` (billing successful operations)."""
        raise NotImplementedError

    def fault_reply(self, kind: str, req: RequestRecord) -> Reply:
        """The provider's own answer for fault ``kind`` ("rate_limit" for the bucket)."""
        raise NotImplementedError

    def bill(self, operation: str, micros: int, job_key: str, subject: str = "") -> None:
        """Record a successful operation of the request being handled on this thread."""
        req: RequestRecord | None = getattr(self._current, "req", None)
        bill = Bill(time.monotonic(), operation, micros / MICROS_PER_USD, job_key, micros,
                    subject, req.seq if req is not None else 0)  # fmt: skip
        with self._lock:
            self._operations.append(bill)

    # -- request processing ----------------------------------------------------------------

    def _process(self, req: RequestRecord) -> Reply:
        reply = self._answer(req)
        if not self._released.is_set():
            with self._lock:
                self._held += 1
            try:
                self._released.wait()
            finally:
                with self._lock:
                    self._held -= 1
        return reply

    def _answer(self, req: RequestRecord) -> Reply:
        self._current.req = req
        with self._lock:
            self._requests.append(req)
            self._last_request_at = max(self._last_request_at, req.ts)
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        with self._lock:
            limited = self._take_token_locked()
            if limited:
                self._rate_limited += 1
            fault = None if limited or not self._faults else self._faults.pop(0)
        if limited:
            return self.fault_reply("rate_limit", req)
        if fault == "slow":
            time.sleep(self.slow_s)
        elif fault is not None:
            return self.fault_reply(fault, req)
        return self.handle(req)

    def _take_token_locked(self) -> bool:
        """True when the request is over the limit (no token left)."""
        if self._rate is None:
            return False
        rps, burst = self._rate
        now = time.monotonic()
        self._tokens = min(float(burst), self._tokens + (now - self._refilled_at) * rps)
        self._refilled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return False
        return True

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _opened(self, req: RequestRecord) -> RequestRecord:
        """Number ``req`` and count it in flight until :meth:`_closed`."""
        with self._lock:
            self._seq += 1
            req = replace(req, seq=self._seq)
            self._open[req.seq] = req
        return req

    def _closed(self, req: RequestRecord) -> None:
        with self._lock:
            self._open.pop(req.seq, None)
            self._answered[req.seq] = time.monotonic()


def wait_quiet(fakes: Iterable[FakeServer], quiet_s: float = 0.3, timeout: float = 10.0) -> bool:
    """Block until none of ``fakes`` has received a request for ``quiet_s`` seconds, counted
    from this call at the earliest. True when quiet, False when ``timeout`` ran out first."""
    servers = list(fakes)
    start = time.monotonic()
    deadline = start + timeout
    while True:
        last = max([start, *(f.last_request_at() for f in servers)])
        now = time.monotonic()
        if now - last >= quiet_s:
            return True
        if now >= deadline:
            return False
        time.sleep(min(0.02, max(0.001, last + quiet_s - now)))


def _make_handler(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as httpx pools connections
        disable_nagle_algorithm = True  # no 40 ms stall between headers and body
        timeout = 60  # an idle keep-alive connection is closed after this
        server_version = f"fake-{fake.name}"
        sys_version = ""

        def setup(self) -> None:
            super().setup()
            fake._track(self.connection, True)

        def finish(self) -> None:
            fake._track(self.connection, False)
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, format: str, *args: Any) -> None:
            return  # quiet: the fake keeps its own records

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length > 0 else b""
            parts = urlsplit(self.path)
            req = fake._opened(
                RequestRecord(
                    ts=time.monotonic(),
                    method=self.command,
                    path=parts.path,
                    query=dict(parse_qsl(parts.query, keep_blank_values=True)),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    client_port=int(self.client_address[1]),
                )
            )
            try:
                self._reply(req)
            finally:
                fake._closed(req)

        def _reply(self, req: RequestRecord) -> None:
            try:
                reply = fake._process(req)
            except Exception:  # a bug in the fake: say so instead of dropping the connection
                traceback.print_exc()
                reply = Reply(500, b"fake server error (see the test output)", _TEXT)
            try:
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json; charset=UTF-8", **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)
                self.wfile.flush()
            except OSError:
                self.close_connection = True  # the client gave up (a timeout on "slow")

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _serve

    return Handler
