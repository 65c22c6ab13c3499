"""The bench's stack: nats-server and the services as processes (services.cli.stack), with
workers started, stopped and swapped for others with their own settings between scenarios,
and a look at the JetStream consumers to know when queued work has drained."""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import Mapping, Sequence

import grpc
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from sqlalchemy.engine import make_url

from bench.config import BenchConfig, log
from bench.procstat import Sampler, postmaster_pid, server_cpu_s
from services.cli.stack import WEB, Stack, wait_all_ready
from services.common import bus
from services.common.nats_auth import JOBS
from services.common.settings import Settings

READY_TIMEOUT_S = 60.0
_QUEUES = (
    (bus.WORK_STREAM, bus.DISCOVERY_CONSUMER),
    (bus.WORK_STREAM, bus.ENRICHMENT_CONSUMER),
)

POSTGRES = "postgres"  # the PostgreSQL server's processes, among those sampled


def _local_postmaster(database_url: str | None) -> int | None:
    """The main process of the PostgreSQL server ``database_url`` names, when it is on this
    machine (a loopback host); None otherwise."""
    if not database_url or not database_url.startswith("postgresql"):
        return None
    host = make_url(database_url).host or "localhost"
    if host not in ("127.0.0.1", "localhost", "::1"):
        return None
    return postmaster_pid()


WorkerSpec = tuple[str, str, Mapping[str, str]]  # (service name, label, settings)


class Harness:
    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        # PostgreSQL's main process when the bench runs on a server of this machine: its CPU
        # is counted like a service's (docs/capacity.md sizes PostgreSQL by it).
        self._postmaster = _local_postmaster(config.database_url)
        self.stack = Stack(env=config.stack_env, database_url=config.database_url)
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._channel: grpc.aio.Channel | None = None
        self._stopped: set[str] = set()  # labels of workers stopped on purpose

    @property
    def channel(self) -> grpc.aio.Channel:
        """The bench's channel to the jobs API (after :meth:`start`)."""
        if self._channel is None:
            raise RuntimeError("the jobs service is not started")
        return self._channel

    @property
    def jobs_addr(self) -> str:
        return self.stack.jobs_addr

    @property
    def web_url(self) -> str:
        """The web process's base URL (after :meth:`start_web`)."""
        return self.stack.web_url

    def pid(self, label: str) -> int:
        proc = self.stack.web if label == WEB else self.stack.processes[label]
        pid = proc.pid if proc is not None else None
        if pid is None:
            raise RuntimeError(f"{label} is not running")
        return pid

    def sampler(self, labels: Sequence[str], others: Mapping[str, int] | None = None) -> Sampler:
        """A :class:`Sampler` of the services ``labels``, nats-server, the bench itself and
        ``others`` (name -> pid); and of PostgreSQL when the stack's database is a server on
        this machine (its every process: :data:`POSTGRES`)."""
        pids = {label: self.pid(label) for label in labels}
        if self.stack.nats.pid is not None:
            pids["nats-server"] = self.stack.nats.pid
        pids["bench"] = os.getpid()
        servers = {}
        if self._postmaster is not None:
            servers[POSTGRES] = functools.partial(server_cpu_s, self._postmaster)
        return Sampler({**pids, **(others or {})}, servers=servers)

    async def start(self, workers: Sequence[WorkerSpec] = ()) -> None:
        """nats-server, then the jobs service and ``workers`` together; connect to both."""
        started = time.monotonic()
        await asyncio.to_thread(self.stack.nats.start)
        procs = [self.stack.add_service("jobs")]
        procs += [self.stack.add_service(n, label=label, env=env) for n, label, env in workers]
        await asyncio.to_thread(wait_all_ready, procs, READY_TIMEOUT_S)
        # As the jobs service's user: it reads the consumers' state (a worker's may not).
        settings = Settings.from_env(self.stack.nats.client_env(JOBS))
        self._nc = await bus.connect(settings, "prospect-bench")
        self._js = self._nc.jetstream()
        self._channel = grpc.aio.insecure_channel(self.jobs_addr)
        await asyncio.wait_for(self._channel.channel_ready(), 15)
        labels = ", ".join(p.label for p in procs)
        log(f"stack up (nats-server, {labels}) in {time.monotonic() - started:.1f}s")

    async def start_workers(self, specs: Sequence[WorkerSpec]) -> None:
        """Start worker processes (each with its settings on top of the stack's) together."""
        started = time.monotonic()
        self._stopped.difference_update(label for _, label, _ in specs)
        procs = [self.stack.add_service(name, label=label, env=env) for name, label, env in specs]
        await asyncio.to_thread(wait_all_ready, procs, READY_TIMEOUT_S)
        labels = ", ".join(label for _, label, _ in specs)
        log(f"{labels} ready in {time.monotonic() - started:.1f}s")

    async def restart(self, specs: Sequence[WorkerSpec]) -> None:
        """Stop the processes ``specs`` name (by label), then start them again together with
        these settings; the jobs service among them, the bench's channel is made anew (the
        old one would wait out gRPC's reconnection backoff)."""
        labels = [label for _, label, _ in specs]
        if "jobs" in labels and self._channel is not None:
            await self._channel.close()
            self._channel = None
        await self.stop_workers(labels)
        await self.start_workers(specs)
        if "jobs" in labels:
            self._channel = grpc.aio.insecure_channel(self.jobs_addr)
            await asyncio.wait_for(self._channel.channel_ready(), 15)

    async def start_web(self) -> None:
        """Start the web process (``python -m services.web``, the stack's settings) on the
        stack's jobs API, and wait until it serves."""
        started = time.monotonic()
        web = self.stack.add_web()
        self._stopped.discard(WEB)
        await asyncio.to_thread(wait_all_ready, [web], READY_TIMEOUT_S)
        log(f"web ready on {self.web_url} in {time.monotonic() - started:.1f}s")

    async def stop_web(self) -> None:
        """SIGTERM the web process and wait for it to exit."""
        web = self.stack.web
        if web is not None:
            self._stopped.add(WEB)
            await asyncio.to_thread(web.stop, 10.0)

    async def stop_workers(self, labels: Sequence[str]) -> None:
        """SIGTERM the processes ``labels`` (workers, the jobs service) together and wait for
        them to exit."""

        def stop() -> None:
            procs = [self.stack.processes[label] for label in labels]
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.stop(10.0)

        self._stopped.update(labels)
        await asyncio.to_thread(stop)

    async def queued(self) -> int:
        """Tasks and reports not yet delivered or not yet acked: the workers' consumers and
        every consumer of the events stream (one per report partition, however many the
        jobs service was started with)."""
        assert self._js is not None
        infos = [await self._js.consumer_info(stream, name) for stream, name in _QUEUES]
        infos += await self._js.consumers_info(bus.EVENTS_STREAM)
        return sum((info.num_pending or 0) + (info.num_ack_pending or 0) for info in infos)

    async def wait_drained(self, limit_s: float = 60.0) -> None:
        """Until every queue is empty (twice in a row), so leftovers of a scenario (tasks of
        cancelled jobs, which workers ack and drop) do not weigh on the next one."""
        deadline = time.monotonic() + limit_s
        empty = 0
        while empty < 2:
            left = await self.queued()
            empty = empty + 1 if left == 0 else 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"queues not drained after {limit_s}s ({left} messages left)")
            await asyncio.sleep(0.1)

    def check_alive(self) -> None:
        """Raise, with its log tail, if a process of the stack exited unasked."""
        children = [p for label, p in self.stack.processes.items() if label not in self._stopped]
        if self.stack.web is not None and WEB not in self._stopped:
            children.append(self.stack.web)
        for child in [*children, self.stack.nats]:
            if child.pid is not None and not child.is_running:
                tail = child.log_tail()
                raise RuntimeError(f"{child.label} exited ({child.returncode}):\n{tail}")

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.close(), 5)
            except Exception:
                pass
            self._nc = None

    def stop(self) -> None:
        """Stop every process started (idempotent; safe after a failed start)."""
        self.stack.stop()
