"""Logging set-up shared by the services: one line per record on stderr."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # nats.py logs every reconnect attempt at ERROR; ours are enough.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
