"""services.cli.render: bars, money, tables, progress lines."""

from __future__ import annotations

import io
import json
import re

import pytest

from prospect.v1 import jobs_pb2
from services.cli import render


@pytest.mark.parametrize(
    ("percent", "bar"),
    [
        (0, "[--------------------]"),
        (45, "[#########-----------]"),
        (50, "[##########----------]"),
        (99, "[###################-]"),
        (100, "[####################]"),
        (150, "[####################]"),
        (-5, "[--------------------]"),
    ],
)
def test_progress_bar(percent, bar):
    assert render.progress_bar(percent) == bar
    assert len(render.progress_bar(percent)) == render.BAR_WIDTH + 2


def test_progress_bar_width():
    assert render.progress_bar(50, width=10) == "[#####-----]"
    assert len(render.progress_bar(33, width=7)) == 9


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        (0, "$0.00"),
        (0.45, "$0.45"),
        (0.449, "$0.45"),
        (1234.5, "$1,234.50"),
        (0.008, "$0.008"),
        (0.0004, "$0.000"),
        (-2.5, "-$2.50"),
    ],
)
def test_format_money(amount, text):
    assert render.format_money(amount) == text


def test_table_aligns_columns():
    out = render.table(
        ("NAME", "SCORE", "COST"),
        [("Blue Bottle", "87", "$0.05"), ("Cafe", "100", "$12.34")],
        right=(1, 2),
    )
    lines = out.splitlines()
    assert lines[0] == "NAME         SCORE    COST"
    assert lines[1] == "-----------  -----  ------"
    assert lines[2] == "Blue Bottle     87   $0.05"
    assert lines[3] == "Cafe           100  $12.34"


def _lead(name: str, score: int, cost: float, email: str = "", **kw) -> jobs_pb2.Lead:
    return jobs_pb2.Lead(
        business_name=name,
        confidence_score=score,
        email=email,
        email_status="valid" if email else "not_found",
        phone="+1 206 555 0100",
        website="https://example.com",
        cost=cost,
        **kw,
    )


def test_leads_table_has_every_column_and_aligns():
    leads = [
        _lead("Espresso Vivace", 92, 0.059, "hi@vivace.com", address="532 Broadway E, Seattle",
              rating=4.6, review_count=1234, email_source="website"),
        _lead("Zeitgeist", 71, 0.034),
    ]  # fmt: skip
    out = render.leads_table(leads)
    lines = out.splitlines()
    header = lines[0]
    assert header.split()[:3] == ["NAME", "ADDRESS", "RATING"]
    for column in ("SCORE", "EMAIL", "EMAIL STATUS", "SOURCE", "PHONE", "WEBSITE", "COST"):
        assert column in header
    assert header.index("EMAIL STATUS") < header.index("SOURCE") < header.index("PHONE")
    assert "  valid         website  " in lines[2]  # the step that found the email
    assert len(lines) == 4
    assert "  532 Broadway E, Seattle  " in lines[2]
    assert "  4.6 (1,234)  " in lines[2]
    cells = lines[3].split()
    assert cells[0] == "Zeitgeist"
    assert cells[1:3] == ["-", "-"]  # no address, unrated
    assert "-" in lines[3].split()  # missing email shown as a dash
    # right-aligned cost column: all rows end at the same column
    assert len({len(line) for line in lines[1:]}) == 1
    assert lines[2].endswith("$0.06") and lines[3].endswith("$0.03")


def test_rating_text():
    assert render.rating_text(jobs_pb2.Lead(rating=4.25, review_count=7)) == "4.2 (7)"
    assert render.rating_text(jobs_pb2.Lead(rating=0, review_count=3)) == "0.0 (3)"
    assert render.rating_text(jobs_pb2.Lead()) == "-"


def test_leads_document_table_and_empty():
    leads = [_lead("A", 90, 0.5), _lead("B", 80, 0.25)]
    text = render.leads_document(leads, "table")
    assert text.startswith("NAME ") and text.endswith("\n\n2 leads, $0.75 in total\n")
    assert render.leads_document([], "table") == "no leads\n"
    assert render.leads_document([], "json") == "[]\n"
    with pytest.raises(ValueError, match="xml"):
        render.leads_document(leads, "xml")


def _update(progress: int, **kw) -> jobs_pb2.JobUpdate:
    job = jobs_pb2.Job(
        id="j1",
        status=kw.pop("status", jobs_pb2.JOB_STATUS_PROCESSING),
        stage=jobs_pb2.STAGE_ENRICHING,
        progress=progress,
        version=7,
        metrics=jobs_pb2.JobMetrics(
            businesses_found=18, qualified_leads=10, leads_enriched=3, total_cost=0.45
        ),
        error=kw.pop("error", ""),
    )
    return jobs_pb2.JobUpdate(job=job, message=kw.pop("message", ""))


def test_progress_line():
    line = render.progress_line(_update(45, message="Enriching 3/10 contacts, $0.45 so far"))
    assert line == (
        "[#########-----------]  45%  ENRICHING  found 18 qualified 10 enriched 3 $0.45"
        "  Enriching 3/10 contacts, $0.45 so far"
    )


def test_progress_line_terminal_shows_status_and_error():
    line = render.progress_line(_update(60, status=jobs_pb2.JOB_STATUS_FAILED, error="quota"))
    assert "FAILED" in line and "ENRICHING" not in line
    assert line.endswith("error: quota")


def test_job_summary_mentions_sandbox_and_cost():
    job = _update(100, status=jobs_pb2.JOB_STATUS_COMPLETED).job
    job.campaign_id = "c1"
    job.config.business_type, job.config.location = "coffee shop", "Seattle, WA"
    job.metrics.sandbox = True
    job.metrics.emails_verified = 2
    text = render.job_summary(job)
    assert "COMPLETED" in text
    assert "$0.45" in text
    assert "sandbox" in text
    # values start in one column: labels (single-spaced words) padded to one width
    matches = [re.match(r"\S+(?: \S+)*\s+", line) for line in text.splitlines()]
    assert len({m.end() for m in matches if m}) == 1


def test_status_and_stage_names():
    assert render.status_name(jobs_pb2.JOB_STATUS_CANCELLED) == "CANCELLED"
    assert render.stage_name(jobs_pb2.STAGE_DISCOVERING) == "DISCOVERING"


def test_json_uses_proto_names_and_defaults():
    data = json.loads(render.to_json(jobs_pb2.SubmitCampaignResponse(job_id="j1")))
    assert data == {"job_id": "j1", "campaign_id": "", "status": "JOB_STATUS_UNSPECIFIED"}


def test_live_line_redraws_on_tty_and_prints_lines_otherwise():
    out = io.StringIO()
    live = render.LiveLine(out, tty=False)
    live.show("a")
    live.show("b")
    live.finish()
    assert out.getvalue() == "a\nb\n"

    out = io.StringIO()
    live = render.LiveLine(out, tty=True)
    live.show("a")
    live.show("b")
    live.note("lost")
    live.show("c")
    live.finish()
    assert out.getvalue() == "\ra\x1b[K\rb\x1b[K\nlost\n\rc\x1b[K\n"
