"""Logging set-up shared by the services: one line per record on stderr."""

from __future__ import annotations

import logging
import sys

# Start-up and shutdown lines ("jobs ready on ...") are logged whatever LOG_LEVEL says:
# launchers and operators wait for them.
lifecycle = logging.getLogger("prospect.lifecycle")


def setup_logging(level: str, service: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"%(asctime)s %(levelname)s {service} %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    lifecycle.setLevel(logging.INFO)
    # nats.py logs every reconnect attempt at ERROR; ours are enough.
    logging.getLogger("nats").setLevel(logging.CRITICAL)
