"""``make up`` (``python -m services.cli.up``): the stack in the foreground, where the
environment puts it, stopped cleanly by the signals a terminal or a process manager sends.

A SIGTERM or Ctrl-C reaches every process of the foreground process group: make and the
launcher (make then sends the launcher one more SIGTERM of its own); the stack's children
run in sessions of their own and hear only the launcher. So the launcher gets the signal
more than once, and a later one must not cut short the clean-up the first one started.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.stack import free_port
from tests.e2e.cli import ok, run_cli
from tests.e2e.processes import environment_of, processes_mentioning

pytestmark = pytest.mark.e2e

BANNER_END = "Ctrl-C stops everything."
START_TIMEOUT = 90.0  # guards against a hang only
STOP_TIMEOUT = 120.0
SERVICES = ("jobs", "discovery", "enrichment", "web")


def wait_for_output(proc: subprocess.Popen[bytes], log: Path, text: str) -> str:
    """The launcher's output once it contains ``text``; fails if it exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        out = log.read_text(errors="replace")
        if text in out:
            return out
        assert proc.poll() is None, f"launcher exited {proc.returncode} before {text!r}:\n{out}"
        assert time.monotonic() < deadline, f"no {text!r} after {START_TIMEOUT}s:\n{out}"
        time.sleep(0.05)


def pids(lines: list[str]) -> set[int]:
    return {int(line.split(":", 1)[0]) for line in lines}


def accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


@contextlib.contextmanager
def launcher(
    cwd: Path, env: dict[str, str], log: Path | None, scope: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m services.cli.up`` in a process group of its own, its output in ``log``
    (None: a pipe, ``proc.stdout``); it and every process mentioning ``scope`` (its stack's,
    wherever their data went) are killed on the way out if still there, so a failing test
    leaves nothing running."""
    with contextlib.ExitStack() as files:
        out = files.enter_context(open(log, "wb")) if log is not None else subprocess.PIPE
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli.up"],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
        for pid in pids(processes_mentioning(str(scope))):  # the stack's children, if left
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_make_up_uses_its_environment_and_stops_cleanly_on_repeated_signals(
    tmp_path: Path, sig: signal.Signals
) -> None:
    cwd, data_dir = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    jobs_port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(DATA_DIR=str(data_dir), JOBS_GRPC_ADDR=f"127.0.0.1:{jobs_port}")
    web_port = free_port()
    env["WEB_ADDR"] = f"127.0.0.1:{web_port}"
    env["SANDBOX_LATENCY_MS"] = "5"
    log = tmp_path / "launcher.out"

    with launcher(cwd, env, log, tmp_path) as proc:
        out = wait_for_output(proc, log, BANNER_END)
        assert f"jobs gRPC API  127.0.0.1:{jobs_port}" in out, out
        assert f"web page, API  http://127.0.0.1:{web_port}/" in out, out
        nats = re.search(
            r"NATS\s+nats://127\.0\.0\.1:(\d+) \(monitor http://127\.0\.0\.1:(\d+)\)", out
        )
        assert nats, out
        nats_ports = [int(port) for port in nats.groups()]
        assert f"sqlite+aiosqlite:///{data_dir.resolve() / 'prospect.db'}" in out, out
        # Every process's Prometheus endpoint is printed, and answers.
        metrics = dict(re.findall(r"metrics\s+(http://127\.0\.0\.1:\d+/metrics) \((\w+)\)", out))
        assert sorted(metrics.values()) == ["discovery", "enrichment", "jobs", "web"], out
        for url in metrics:
            with urllib.request.urlopen(url, timeout=5) as answer:
                assert b"prospect_build_info" in answer.read()
        # The API answers where JOBS_GRPC_ADDR says, and the stack lives under DATA_DIR.
        ok(run_cli(f"127.0.0.1:{jobs_port}", "list"))
        children = processes_mentioning(str(data_dir))
        assert len(children) >= 5, children  # nats-server, the three services and web
        secrets = {
            value
            for pid in pids(children)
            for key, value in environment_of(pid).items()
            if "PASSWORD" in key and value
        }
        assert secrets, "no NATS password found in the children's environment"

        os.killpg(proc.pid, sig)
        # The second arrives while the launcher stops the stack (it printed that it is).
        wait_for_output(proc, log, "stopping")
        os.killpg(proc.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        code = proc.wait(timeout=STOP_TIMEOUT)
        out = log.read_text(errors="replace")
        left = processes_mentioning(str(data_dir))

    assert code == 0, f"exit {code}\n{out}"
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
    assert out.rstrip().endswith("stopped"), out
    assert left == [], left
    assert not any(accepts(port) for port in [jobs_port, web_port, *nats_ports]), out
    assert not any(secret in out for secret in secrets), "a NATS password was printed"
    # Everything under DATA_DIR, nothing in the working directory; each stopped by itself.
    assert list(cwd.iterdir()) == []
    assert (data_dir / "prospect.db").is_file() and (data_dir / "nats" / "jetstream").is_dir()
    logs = data_dir / "logs"
    for name in SERVICES:
        text = (logs / f"{name}.log").read_text()
        assert re.search(rf"\b{name}\b.* stopped$", text, re.MULTILINE), text
    assert "Server Exiting" in (logs / "nats-server.log").read_text()


def test_make_up_stopped_while_starting_stops_what_it_started(tmp_path: Path) -> None:
    cwd, data_dir = tmp_path / "cwd", tmp_path / "state"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PYTHONPATH")}
    env.update(DATA_DIR=str(data_dir), JOBS_GRPC_ADDR=f"127.0.0.1:{free_port()}")
    env["WEB_ADDR"] = f"127.0.0.1:{free_port()}"
    with launcher(cwd, env, None, tmp_path) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed just before it spawns nats-server
        assert first.startswith(b"starting nats-server"), first
        # A signal to the group may even reach a child between its fork and its setsid.
        os.killpg(proc.pid, signal.SIGTERM)
        seen = [first]
        while b"stopping" not in seen[-1]:  # the launcher says so before it stops the stack
            seen.append(proc.stdout.readline())
            assert seen[-1], b"".join(seen)  # the end of its output, before "stopping"
        os.killpg(proc.pid, signal.SIGTERM)
        os.killpg(proc.pid, signal.SIGTERM)
        rest = proc.communicate(timeout=STOP_TIMEOUT)[0]
        out = b"".join([*seen, rest]).decode(errors="replace")
        code = proc.returncode
        left = processes_mentioning(str(tmp_path))

    assert code == 0, f"exit {code}\n{out}"
    assert "Traceback" not in out and "error:" not in out, out
    assert "SIGTERM: stopping..." in out and out.rstrip().endswith("stopped"), out
    assert left == [], left
