"""SQLite's WAL checkpoints, on a thread of their own.

In WAL mode a commit appends pages to the write-ahead log; a checkpoint copies them back
into the database file and syncs it, so the log can start over. By default the commit that
takes the log past 1,000 pages runs the checkpoint itself. The jobs service commits on its
event loop's thread (:class:`services.jobs.db.Writer`), so under load that was a 5-7 ms
stall every second or so, which set the slowest 1% of submits and live updates
(`make bench`). So the writer's connections never checkpoint (``wal_autocheckpoint=0``)
and this thread does, on its own connection: a PASSIVE checkpoint takes no lock a writer
waits for, and the driver lets go of the GIL while it copies and syncs.

The log only starts over at a write that finds all of it copied, and under steady writes a
checkpoint running beside them never catches up (the log grew to 270 MB in a 10-second
bench). So a round copies beside the writes until they add little during a pass, then that
little holding the writer's gate, which keeps this process's writes out for the moment it
takes; the first write after it starts the log over.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from typing import NamedTuple

log = logging.getLogger(__name__)

# How often the log is copied back. At the bench's heaviest write load (about 2,000
# submits a second) the log grows by about 2 MB a second.
INTERVAL_S = 0.5
# Passes beside the writes before the last one, which holds them off: it starts once the
# writes added at most GATED_FRAMES pages during a pass (the last pass copies about as
# many, well under a millisecond), or after UNGATED_PASSES passes.
UNGATED_PASSES = 3
GATED_FRAMES = 64


class Checkpoint(NamedTuple):
    busy: bool  # another connection was checkpointing
    log_frames: int  # pages in the log
    copied_frames: int  # of them, in the database file now


class Checkpointer:
    """Checkpoints the SQLite database at ``path`` every ``interval_s`` until stopped;
    ``gate`` is the lock this process's writes hold."""

    def __init__(self, path: str, gate: threading.Lock, interval_s: float = INTERVAL_S) -> None:
        self._path = path
        self._gate = gate
        self._interval_s = interval_s
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0  # checkpoints run so far
        self._last: Checkpoint | None = None  # the log as the last round left it

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def checkpoint(self, conn: sqlite3.Connection) -> Checkpoint:
        """Copy the whole log back, so that the next write starts it over."""
        result = _passive(conn)
        if result == self._last:
            return result  # nothing written since the last round: leave the writes be
        # Beside the writes while they keep adding much (each pass has only what came in
        # during the one before to copy), then the rest with them held off.
        for _ in range(UNGATED_PASSES):
            if result.busy or result.log_frames == 0:
                return result
            again = _passive(conn)
            added, result = again.log_frames - result.log_frames, again
            if added <= GATED_FRAMES:
                break
        if result.busy or result.log_frames == 0:
            return result
        with self._gate:
            self._last = _passive(conn)
        return self._last

    def _run(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)
        failing = False
        try:
            while not self._stopping.wait(self._interval_s):
                try:
                    self.checkpoint(conn)
                    self.rounds += 1
                    failing = False
                except sqlite3.Error as exc:
                    if not failing:  # once per spell, not every half second
                        log.warning("WAL checkpoint failed (will retry): %s", exc)
                    failing = True
        finally:
            conn.close()


def _passive(conn: sqlite3.Connection) -> Checkpoint:
    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return Checkpoint(bool(busy), frames, copied)
