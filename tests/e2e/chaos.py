"""The chaos harness: a whole stack on the fake providers, crashed at seeded random moments.

What the chaos test needs beyond :mod:`services.cli.stack`:

- :class:`ChaosStack`: nats-server, one or two jobs replicas (two on PostgreSQL), two
  discovery and two enrichment workers, all on the fakes; log tails printed on failure and
  every process stopped whatever happens.
- :class:`Chaos`: carries out a schedule of :class:`Fault` (kill -9, a nats-server kill
  and restart, a SIGTERM, an outage of every worker of one kind) and records each crash
  as a :class:`Crash`: when, and which TCP ports the dead process held. A worker is
  stopped (SIGSTOP) before it is killed, so its ports and the fakes' requests it had
  under way are read while it can make no new one.
- :class:`Api`: gRPC stubs on every jobs replica, per user, failing over between replicas.
- :func:`watch_job`: a resuming watch from version 0 that records every update raw (to
  check that versions strictly increase) and the leads as they were when the job was
  first seen terminal.
- :func:`read_database`: the rows the checks compare with the API.

Everything is timed with ``time.monotonic()``, the clock of the fakes' records. The
campaigns the test runs on it are in chaos_campaigns.py, the checks in chaos_checks.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import signal
import time
import urllib.request
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from prospect.v1 import jobs_pb2, jobs_pb2_grpc
from services.cli.client import is_terminal, job_service
from services.cli.stack import ServiceProcess, Stack, StackError, wait_all_ready
from tests.fakes import FakeProviders, FakeServer, RequestRecord

WORKER_KINDS = ("discovery", "enrichment")
# gRPC codes after which a call is tried again, on the next replica: the replica is down,
# restarting, or its stream broke.
RETRY_CODES = frozenset({
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
})  # fmt: skip


def tcp_ports(pid: int) -> frozenset[int]:
    """The local TCP ports of the sockets process ``pid`` holds (Linux /proc)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[9] in inodes:
                    ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return frozenset(ports)


# -- the stack ------------------------------------------------------------------------------


class ChaosStack:
    """The processes of one chaos run; see the module docstring."""

    def __init__(
        self, data_dir: Path, fakes: FakeProviders, env: Mapping[str, str], database_url: str
    ) -> None:
        self.fakes = fakes
        self.postgres = not database_url.startswith("sqlite")
        self.stack = Stack(data_dir, database_url=database_url, env={**fakes.env(), **env})

    @property
    def processes(self) -> dict[str, ServiceProcess]:
        return self.stack.processes

    @property
    def replica_addrs(self) -> list[str]:
        """The gRPC address of every jobs replica."""
        return [p.grpc_addr or "" for p in self.processes.values() if p.name == "jobs"]

    def labels(self, kind: str) -> list[str]:
        return [label for label, p in self.processes.items() if p.name == kind]

    def start(self) -> None:
        self.stack.start()  # nats-server, jobs, discovery, enrichment
        extra = [self.stack.add_service(kind, label=f"{kind}-2") for kind in WORKER_KINDS]
        if self.postgres:
            extra.append(self.stack.start_jobs_replica(wait=False))
        wait_all_ready(extra)

    def stop(self) -> None:
        self.fakes.release()
        self.stack.stop(grace=5.0)

    @contextlib.contextmanager
    def running(self) -> Iterator[ChaosStack]:
        """Started; on the way out every process stopped, its log tails printed on failure."""
        try:
            self.start()
            yield self
        except BaseException:
            print(f"\n===== logs of the chaos stack =====\n{self.stack.log_tails(60)}")
            raise
        finally:
            self.stop()


def consumer_backlogs(monitor_url: str) -> dict[str, tuple[int, int, int]]:
    """Per durable consumer (``stream/consumer``): messages not yet delivered, delivered
    but not acked, and redelivered ones; from nats-server's monitoring port."""
    with urllib.request.urlopen(f"{monitor_url}/jsz?consumers=true", timeout=5) as answer:
        data = json.load(answer)
    out = {}
    for account in data.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            for c in stream.get("consumer_detail") or []:
                key = f"{stream['name']}/{c['name']}"
                out[key] = (c["num_pending"], c["num_ack_pending"], c["num_redelivered"])
    return out


async def reset_postgres(url: str) -> None:
    """An empty schema, as tests/conftest.py's database fixture leaves it."""
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            await conn.execute(text("CREATE SCHEMA public"))
    finally:
        await engine.dispose()


# -- faults -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One planned fault, ``at`` seconds after the run's start.

    ``action``: "kill" (kill -9 ``target``), "nats" (kill -9 nats-server), "sigterm"
    (graceful stop of ``target``), "outage" (kill -9 every worker of kind ``target``).
    Each is started again ``down_s`` seconds later.
    """

    at: float
    action: str
    target: str
    down_s: float

    def __str__(self) -> str:
        return f"t+{self.at:5.1f}s {self.action} {self.target} (down {self.down_s:.1f}s)"


@dataclass
class Crash:
    """A process killed with SIGKILL: which, when, and the TCP ports it held (None for
    nats-server, whose death touches every worker's calls)."""

    label: str
    kind: str  # "jobs", "discovery", "enrichment" or "nats"
    at: float
    ports: frozenset[int] | None
    in_flight: int  # the fakes' requests from its ports unanswered when it stopped
    back_at: float = 0.0  # when it was ready again (0.0: never)

    def from_process(self, req: RequestRecord) -> bool:
        return self.ports is None or req.client_port in self.ports


class Chaos:
    """Carries out faults on a :class:`ChaosStack` and records what happened."""

    def __init__(self, chaos_stack: ChaosStack, shutdown_grace_s: float) -> None:
        self._cs = chaos_stack
        self._grace = shutdown_grace_s
        self._busy: set[str] = set()  # labels down or coming back
        self._restarts: set[asyncio.Task[None]] = set()
        self.crashes: list[Crash] = []
        self.timeline: list[str] = []
        self.sigterm_exits: dict[str, int | None] = {}
        self.died: list[str] = []  # processes found dead that nobody killed
        self.t0 = time.monotonic()

    def note(self, line: str) -> None:
        entry = f"t+{time.monotonic() - self.t0:6.2f}s {line}"
        self.timeline.append(entry)
        print(f"[chaos] {entry}", flush=True)

    async def run(self, faults: list[Fault], t0: float) -> None:
        """Each fault at its time; one whose target is down already is put off by a second
        at a time (so every planned fault happens, to a running process)."""
        self.t0 = t0
        queue = [(f.at, n, f) for n, f in enumerate(faults)]
        heapq.heapify(queue)
        while queue:
            at, n, fault = heapq.heappop(queue)
            await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
            if not await self.apply(fault):
                heapq.heappush(queue, (at + 1.0, n, fault))

    async def abort(self) -> None:
        """Cancel the restarts under way (on failure, before the stack stops)."""
        for task in list(self._restarts):
            task.cancel()
        await asyncio.gather(*self._restarts, return_exceptions=True)

    async def settle(self) -> None:
        """Wait for every restart under way; then start whatever is still down."""
        while self._restarts:
            await asyncio.gather(*list(self._restarts))
        for label, proc in self._cs.processes.items():
            if not proc.is_running:
                self.note(f"{label} found down at the end: starting it")
                await self._start(label, proc)
        if not self._cs.stack.nats.is_running:
            await asyncio.to_thread(self._cs.stack.nats.start)

    async def apply(self, fault: Fault) -> bool:
        """Carry out ``fault``; False (nothing done) while a process it targets is down."""
        procs = self._cs.processes
        targets = {
            "nats": ["nats-server"],
            "outage": self._cs.labels(fault.target),
            "kill": [fault.target],
            "sigterm": [fault.target],
        }[fault.action]
        if self._busy.intersection(targets):
            return False
        if fault.action == "nats":
            await self._kill_nats(fault.down_s)
        elif fault.action == "sigterm":
            await self._sigterm(fault.target, procs[fault.target], fault.down_s)
        else:
            why = "kill -9" if fault.action == "kill" else f"outage of every {fault.target}:"
            for label in targets:
                self._kill(label, procs[label], fault.down_s, why)
        return True

    def _kill(self, label: str, proc: ServiceProcess, down_s: float, why: str) -> None:
        self._busy.add(label)
        if not proc.is_running or proc.pid is None:
            self.died.append(f"{label} had exited by itself (code {proc.returncode})")
            self.note(f"{why} {label}: {self.died[-1]}; starting it again")
            self._later(self._restart(label, proc, down_s, None))
            return
        pid = proc.pid
        os.kill(pid, signal.SIGSTOP)  # frozen: no request starts while we look
        at = time.monotonic()
        ports = tcp_ports(pid)
        open_now = sum(1 for _, r in self._cs.fakes.in_flight() if r.client_port in ports)
        proc.kill()
        self.crashes.append(Crash(label, proc.name, at, ports, open_now))
        self.note(f"{why} {label} (pid {pid}, {open_now} request(s) at the fakes)")
        self._later(self._restart(label, proc, down_s, self.crashes[-1]))

    async def _kill_nats(self, down_s: float) -> None:
        nats = self._cs.stack.nats
        self._busy.add("nats-server")
        at = time.monotonic()
        open_now = len(self._cs.fakes.in_flight())
        nats.kill()
        crash = Crash("nats-server", "nats", at, None, open_now)
        self.crashes.append(crash)
        self.note(f"kill -9 nats-server ({open_now} request(s) at the fakes)")

        async def back() -> None:
            await asyncio.sleep(down_s)
            await asyncio.to_thread(nats.start)
            crash.back_at = time.monotonic()
            self._busy.discard("nats-server")
            self.note("nats-server started again (same port and store)")

        self._later(back())

    async def _sigterm(self, label: str, proc: ServiceProcess, down_s: float) -> None:
        self._busy.add(label)
        self.note(f"SIGTERM {label}")
        code = await asyncio.to_thread(proc.stop, self._grace + 5.0)
        self.sigterm_exits[label] = code
        self.note(f"{label} exited {code} after SIGTERM")
        self._later(self._restart(label, proc, down_s, None))

    def _later(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._restarts.add(task)
        task.add_done_callback(self._restarts.discard)

    async def _restart(
        self, label: str, proc: ServiceProcess, down_s: float, crash: Crash | None
    ) -> None:
        await asyncio.sleep(down_s)
        await self._start(label, proc)
        if crash is not None:
            crash.back_at = time.monotonic()
        self._busy.discard(label)

    async def _start(self, label: str, proc: ServiceProcess) -> None:
        """Start ``proc`` and wait until ready; a start that dies (NATS down at that
        moment, say) is tried again."""
        for attempt in range(1, 6):
            proc.start()
            try:
                await asyncio.to_thread(wait_all_ready, [proc], 60.0)
            except StackError as exc:
                self.note(f"{label} failed to start (attempt {attempt}): {exc}"[:300])
                proc.kill()
                await asyncio.sleep(1.0)
                continue
            self.note(f"{label} ready again")
            return
        raise StackError(f"{label} did not start again after 5 attempts")


def exposed(
    crashes: list[Crash],
    fakes: FakeProviders,
    *,
    arrival_grace_s: float,
    answer_lag_s: float,
) -> list[tuple[Crash, FakeServer, RequestRecord]]:
    """The requests each crash may have left unaccounted for: sent by the dead process (any
    process, for nats-server) and not yet answered, or answered so shortly before the
    crash that their result may not have been reported; or arriving just after it (sent
    before it, from the socket's buffer)."""
    out: list[tuple[Crash, FakeServer, RequestRecord]] = []
    for crash in crashes:
        if crash.kind == "jobs":
            continue  # the jobs service makes no paid call
        for fake in fakes.fakes:
            for req in fake.requests:
                if not crash.from_process(req) or req.ts > crash.at + arrival_grace_s:
                    continue
                answered = fake.answered_at(req.seq)
                if answered is None or answered >= crash.at - answer_lag_s:
                    out.append((crash, fake, req))
    return out


# -- the API, over every replica ------------------------------------------------------------


class Api:
    """Stubs on every jobs replica for every user; :meth:`call` fails over between them."""

    def __init__(self, addrs: list[str], tokens: Mapping[str, str]) -> None:
        self.addrs = addrs
        self.tokens = dict(tokens)
        self._stubs: dict[tuple[str, str], jobs_pb2_grpc.JobServiceStub] = {}
        self._exit = contextlib.AsyncExitStack()
        self._turn = 0
        self._tries: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

    async def __aenter__(self) -> Api:
        for user, token in self.tokens.items():
            for addr in self.addrs:
                stub = await self._exit.enter_async_context(job_service(addr, token=token))
                self._stubs[(user, addr)] = stub
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    def stub(self, user: str, turn: int | None = None) -> jobs_pb2_grpc.JobServiceStub:
        """The stub of ``user`` on the replica whose ``turn`` it is (round robin)."""
        if turn is None:
            self._turn += 1
            turn = self._turn
        return self._stubs[(user, self.addrs[turn % len(self.addrs)])]

    async def call(self, user: str, method: str, request: Any, *, within: float = 90.0) -> Any:
        """``method`` on some replica, tried again on the next while it fails with one of
        :data:`RETRY_CODES` (``tries`` counts the tries: see :meth:`counted`)."""
        deadline = time.monotonic() + within
        tries = 0
        while True:
            tries += 1
            self._tries[asyncio.current_task()] = tries
            try:
                return await getattr(self.stub(user), method)(request, timeout=10.0)
            except grpc.aio.AioRpcError as err:
                if err.code() not in RETRY_CODES or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(min(0.5, 0.05 * tries))

    def tries(self) -> int:
        """How many tries the current task's latest :meth:`call` took (so far)."""
        return self._tries.get(asyncio.current_task(), 0)

    async def get_job(self, user: str, job_id: str) -> jobs_pb2.Job:
        job: jobs_pb2.Job = await self.call(user, "GetJob", jobs_pb2.GetJobRequest(job_id=job_id))
        return job

    async def leads(self, user: str, job_id: str) -> list[jobs_pb2.Lead]:
        out: list[jobs_pb2.Lead] = []
        token = ""
        while True:
            request = jobs_pb2.ListLeadsRequest(job_id=job_id, page_size=100, page_token=token)
            page = await self.call(user, "ListLeads", request)
            out.extend(page.leads)
            token = page.next_page_token
            if not token:
                return out


# -- watching -------------------------------------------------------------------------------


@dataclass
class WatchLog:
    """Everything one job's watcher saw."""

    job_id: str
    user: str
    updates: list[tuple[float, jobs_pb2.Job]] = field(default_factory=list)  # (seen at, job)
    streams: int = 0
    problems: list[str] = field(default_factory=list)
    terminal: jobs_pb2.Job | None = None  # the first terminal snapshot seen
    terminal_at: float = 0.0
    terminal_leads: list[jobs_pb2.Lead] | None = None  # read right after it
    changed: asyncio.Event = field(default_factory=asyncio.Event)  # set on every update
    over: bool = False  # the watch has ended, terminal or not

    @property
    def latest(self) -> jobs_pb2.Job | None:
        return self.updates[-1][1] if self.updates else None

    @property
    def versions(self) -> list[int]:
        return [job.version for _, job in self.updates]


async def watch_job(api: Api, log: WatchLog, within: float) -> None:
    """Watch from version 0 to the terminal snapshot, resuming on any replica after every
    broken stream with ``after_version`` = the last version seen; record every update as
    received (a version at or below ``after_version``, or not above the one before it on
    the same stream, is a problem), then read the job's leads at once."""
    try:
        await _watch(api, log, within)
    finally:
        log.over = True
        log.changed.set()


async def _watch(api: Api, log: WatchLog, within: float) -> None:
    deadline = time.monotonic() + within
    last = 0
    while log.terminal is None:
        if time.monotonic() > deadline:
            log.problems.append(f"watch saw no terminal snapshot in {within:.0f}s")
            return
        log.streams += 1
        request = jobs_pb2.WatchJobRequest(job_id=log.job_id, after_version=last)
        call = api.stub(log.user).WatchJob(request)
        after = previous = last
        try:
            async for update in call:
                job = update.job
                log.updates.append((time.monotonic(), job))
                log.changed.set()
                if job.version <= previous:
                    log.problems.append(
                        f"stream {log.streams} (after_version {after}) sent v{job.version} "
                        f"after v{previous}"
                    )
                previous = max(previous, job.version)
                last = max(last, job.version)
                if is_terminal(job.status):
                    log.terminal, log.terminal_at = job, log.updates[-1][0]
                    break
        except grpc.aio.AioRpcError as err:
            if err.code() not in RETRY_CODES:
                log.problems.append(f"watch failed: {err.code().name}: {err.details()}")
                return
        finally:
            call.cancel()
        if log.terminal is None:
            await asyncio.sleep(0.2)
    log.terminal_leads = await api.leads(log.user, log.job_id)


@contextlib.asynccontextmanager
async def watching(
    api: Api, logs: list[WatchLog], within: float
) -> AsyncIterator[list[asyncio.Task[None]]]:
    tasks = [asyncio.create_task(watch_job(api, log, within)) for log in logs]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


# -- the database ---------------------------------------------------------------------------


@dataclass
class Rows:
    """The rows of the jobs service's tables that the checks read, by job id."""

    jobs: dict[str, dict[str, Any]]
    campaigns: dict[str, list[dict[str, Any]]]
    leads: dict[str, list[dict[str, Any]]]
    applied_reports: dict[str, int]


async def read_database(url: str) -> Rows:
    """Read with plain SQL (the models are not imported: the rows are what is checked)."""
    kwargs: dict[str, Any] = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {}
    engine = create_async_engine(url, **kwargs)
    try:
        async with engine.connect() as conn:

            async def rows(sql: str) -> list[dict[str, Any]]:
                return [dict(r._mapping) for r in await conn.execute(text(sql))]

            jobs = await rows("SELECT id, status, stage, version, metrics, attempts FROM jobs")
            campaigns = await rows("SELECT id, job_id, status, total_cost_micros FROM campaigns")
            leads = await rows(
                "SELECT id, job_id, campaign_id, place_id, email, email_status, cost_micros "
                "FROM leads"
            )
            applied = await rows(
                "SELECT job_id, COUNT(*) AS n FROM applied_reports GROUP BY job_id"
            )
    finally:
        await engine.dispose()
    for job in jobs:
        if isinstance(job["metrics"], str):
            job["metrics"] = json.loads(job["metrics"])
    out = Rows({j["id"]: j for j in jobs}, {}, {}, {a["job_id"]: a["n"] for a in applied})
    for c in campaigns:
        out.campaigns.setdefault(c["job_id"], []).append(c)
    for lead in leads:
        out.leads.setdefault(lead["job_id"], []).append(lead)
    return out
