"""A whole stack (nats-server, jobs, discovery, enrichment as separate processes) for the
end-to-end tests of one module; stopped after them even when they fail."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.cli.stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    running = Stack(data_dir, env={"SANDBOX_LATENCY_MS": "5", "LOG_LEVEL": "INFO"})
    running.start()
    try:
        yield running
    finally:
        running.stop()
