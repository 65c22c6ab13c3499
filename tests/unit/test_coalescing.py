"""Which snapshots a committed batch of reports publishes (no NATS, no database)."""

from __future__ import annotations

from dataclasses import replace

from google.protobuf.timestamp_pb2 import Timestamp

from services.jobs import machine as m
from services.jobs.models import JobRow, transient, utcnow
from services.jobs.publishing import Applied, coalesced


def job(job_id: str) -> JobRow:
    now = utcnow()
    return transient(
        JobRow,
        {
            "id": job_id, "campaign_id": f"cmp_{job_id}", "user_id": "alice",
            "type": "campaign", "status": "PROCESSING", "stage": "ENRICHING", "progress": 50,
            "version": 1, "config": {"business_type": "cafe", "location": "Here"},
            "metrics": {}, "error": "", "message": "", "attempts": 1, "max_attempts": 3,
            "idempotency_key": None, "created_at": now, "started_at": now,
            "completed_at": None, "updated_at": now,
        },
    )  # fmt: skip


def applied(row: JobRow, *versions: int, stamp_s: int = 0) -> Applied:
    snapshots = [
        m.Snapshot(replace(m.JobState(), version=v, progress=v), f"v{v}") for v in versions
    ]
    return Applied(job_id=row.id, job=row, snapshots=snapshots, stamp=Timestamp(seconds=stamp_s))


def published(batch: list[Applied]) -> list[tuple[str, list[int]]]:
    return [(job_id, [u.job.version for u in ups]) for job_id, ups in coalesced(tuple(batch))]


def test_one_report_of_a_job_publishes_every_version_it_made() -> None:
    a = job("a")
    assert published([applied(a, 2, 3)]) == [("a", [2, 3])]


def test_several_reports_of_a_job_in_one_batch_publish_only_the_latest() -> None:
    a, b = job("a"), job("b")
    batch = [applied(a, 2, 3), applied(b, 5), applied(a, 4), Applied(job_id="a")]
    # a: only version 4 (the newest); b: its one version; a report that changed nothing
    # (no snapshots) publishes nothing and hides nothing.
    assert published(batch) == [("b", [5]), ("a", [4])]
    [(_, [update])] = coalesced((applied(a, 4),))
    assert update.message == "v4" and update.job.id == "a"


def test_a_coalesced_update_counts_its_latency_from_the_oldest_report_in_it() -> None:
    a = job("a")
    [(_, [update])] = coalesced((applied(a, 2, stamp_s=100), applied(a, 3, stamp_s=105)))
    assert update.job.version == 3 and update.report_published_at.seconds == 100
    [(_, updates)] = coalesced((applied(a, 4, 5, stamp_s=110),))
    assert [u.report_published_at.seconds for u in updates] == [110, 110]
