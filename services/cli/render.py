"""Plain-text rendering for the prospect CLI: progress bars, job summaries, tables, money,
and the leads as a table, JSON or CSV.

Pure functions from protobuf messages to strings, plus :class:`LiveLine`, the one piece
that writes to a terminal. Nothing here talks to the network.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from prospect.v1 import jobs_pb2
from services.cli.client import is_terminal
from services.common.money import usd_to_micros

BAR_WIDTH = 20


def format_money(amount: float) -> str:
    """USD with cents (``$1,234.50``); sub-cent amounts keep a third decimal (``$0.008``)."""
    sign = "-" if amount < 0 else ""
    amount = abs(amount)
    if 0 < amount < 0.01:
        return f"{sign}${amount:.3f}"
    return f"{sign}${amount:,.2f}"


def progress_bar(percent: float, width: int = BAR_WIDTH) -> str:
    """``[#########-----------]``: ``width`` cells filled in proportion to ``percent``."""
    percent = min(100.0, max(0.0, percent))
    filled = int(width * percent / 100)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def status_name(status: int) -> str:
    """``COMPLETED`` for ``JOB_STATUS_COMPLETED``."""
    return jobs_pb2.JobStatus.Name(status).removeprefix("JOB_STATUS_")


def stage_name(stage: int) -> str:
    """``ENRICHING`` for ``STAGE_ENRICHING``."""
    return jobs_pb2.Stage.Name(stage).removeprefix("STAGE_")


def metrics_text(m: jobs_pb2.JobMetrics) -> str:
    return (
        f"found {m.businesses_found} qualified {m.qualified_leads} "
        f"enriched {m.leads_enriched} {format_money(m.total_cost)}"
    )


def progress_line(update: jobs_pb2.JobUpdate, width: int = BAR_WIDTH) -> str:
    """One line for one update: bar, percent, stage (or final status), metrics, message."""
    job = update.job
    stopping = job.status in (jobs_pb2.JOB_STATUS_CANCELLING, jobs_pb2.JOB_STATUS_FAILING)
    shown = is_terminal(job.status) or stopping
    phase = status_name(job.status) if shown else stage_name(job.stage)
    line = (
        f"{progress_bar(job.progress, width)} {job.progress:3d}%  {phase:<10} "
        f"{metrics_text(job.metrics)}"
    )
    if update.message:
        line += f"  {update.message}"
    if job.error:
        line += f"  error: {job.error}"
    return line


def job_summary(job: jobs_pb2.Job) -> str:
    """A multi-line, aligned description of one job."""
    c, m = job.config, job.metrics
    rows: list[tuple[str, str]] = [
        ("job", job.id),
        ("campaign", job.campaign_id),
        ("status", status_name(job.status)),
        ("stage", f"{stage_name(job.stage)} ({job.progress}%)"),
        ("query", f"{c.business_type} in {c.location}"),
        (
            "limits",
            f"max {c.max_results} leads, min score {c.min_confidence_score}, "
            f"budget {format_money(c.budget_limit) if c.budget_limit else 'none'}, "
            f"verify emails {'yes' if c.verify_emails else 'no'}",
        ),
        ("found", str(m.businesses_found)),
        ("qualified", str(m.qualified_leads)),
        ("enriched", f"{m.leads_enriched} (emails found {m.emails_found})"),
        ("verified", str(m.emails_verified)),
        ("total cost", format_money(m.total_cost)),
        ("avg score", f"{m.avg_confidence:.1f}"),
    ]
    if m.leads_skipped_budget:
        rows.append(("over budget", f"{m.leads_skipped_budget} leads skipped"))
    if c.target_verified_emails:
        rows.append(("goal", f"{c.target_verified_emails} verified emails"))
    if m.leads_skipped_goal:
        rows.append(("goal reached", f"{m.leads_skipped_goal} leads skipped"))
    if m.providers:
        rows.append(("providers", ", ".join(f"{k}={v}" for k, v in sorted(m.providers.items()))))
    if m.sandbox:
        rows.append(("note", "sandbox providers: simulated data and costs, nothing was billed"))
    if job.error:
        rows.append(("error", job.error))
    rows.append(("attempts", f"{job.attempts}/{job.max_attempts}" if job.max_attempts else "-"))
    for label, ts in (("created", job.created_at), ("started", job.started_at)):
        if ts.seconds:
            rows.append((label, ts.ToDatetime().isoformat(timespec="seconds") + "Z"))
    if job.completed_at.seconds:
        rows.append(("finished", job.completed_at.ToDatetime().isoformat(timespec="seconds") + "Z"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control and format characters (escape
    sequences, newlines, direction overrides from a provider's data) become spaces."""
    return "".join(" " if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in text)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Columns padded to their widest cell; the column indexes in ``right`` align right.
    Cells are made :func:`printable`."""
    body = [[printable(str(cell)) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    right_set = set(right)

    def line(cells: Sequence[str]) -> str:
        parts = [
            cell.rjust(w) if i in right_set else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = ["-" * w for w in widths]
    return "\n".join([line(headers), line(rule), *(line(row) for row in body)])


def rating_text(lead: jobs_pb2.Lead) -> str:
    """``4.6 (1,234)``: the rating and its number of reviews; ``-`` for an unrated place."""
    if not lead.rating and not lead.review_count:
        return "-"
    return f"{lead.rating:.1f} ({lead.review_count:,})"


def leads_table(leads: Iterable[jobs_pb2.Lead]) -> str:
    headers = (
        "NAME", "ADDRESS", "RATING", "SCORE", "EMAIL", "EMAIL STATUS", "SOURCE", "PHONE",
        "WEBSITE", "COST",
    )  # fmt: skip
    rows = [
        (
            lead.business_name,
            lead.address or "-",
            rating_text(lead),
            str(lead.confidence_score),
            lead.email or "-",
            lead.email_status or "-",
            lead.email_source or "-",  # the waterfall step that found the email
            lead.phone or "-",
            lead.website or "-",
            format_money(lead.cost),
        )
        for lead in leads
    ]
    return table(headers, rows, right=(2, 3, 9))


# --- leads as a document: table, JSON or CSV -----------------------------------------------

LEAD_FORMATS = ("table", "json", "csv")

# The CSV columns, in order: snake_case like the JSON keys (``lead_id`` is the lead's ``id``).
CSV_COLUMNS = (
    "rank",  # 1-based position in the job's lead order (best score first)
    "business_name",
    "address",
    "phone",
    "website",
    "rating",
    "review_count",
    "confidence_score",
    "email",
    "email_status",
    "from_cache",
    "cost_usd",
    "cost_by_provider_usd",  # "provider=cost" pairs, sorted, "; " between them
    "lead_id",
    "place_id",
    "campaign_id",
    "email_source",  # the waterfall step that found the email (website, pattern, hunter, cache)
)
# What a spreadsheet may take for the start of a formula (OWASP, "CSV Injection").
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralize_cell(text: str) -> str:
    """``text``, prefixed with ``'`` when a spreadsheet would run it as a formula."""
    return "'" + text if text.startswith(FORMULA_TRIGGERS) else text


def lead_micros(lead: jobs_pb2.Lead) -> int:
    """A lead's exact cost in micro-dollars (a server without the micros field: from the
    double)."""
    return lead.cost_micros or usd_to_micros(lead.cost)


def format_micros(micros: int) -> str:
    """Micro-dollars as an exact plain decimal of USD (``0.059``, ``12``, ``0``)."""
    whole, fraction = divmod(micros, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".")


def format_decimal(value: float, places: int = 6) -> str:
    """A plain decimal a spreadsheet reads as a number: at most ``places`` decimals, no
    exponent, no trailing zeros (``0.059``, ``4.5``, ``0``)."""
    text = f"{value:.{places}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def lead_csv_row(rank: int, lead: jobs_pb2.Lead) -> list[str]:
    """One lead's CSV cells, in :data:`CSV_COLUMNS` order. Text from the lead (names,
    addresses, emails... anything a provider or a web page supplied) is neutralised;
    numbers are written by this code, never negative, and are left as numbers."""
    by_provider = "; ".join(
        f"{name}={format_decimal(cost)}" for name, cost in sorted(lead.cost_by_provider.items())
    )
    text = [lead.business_name, lead.address, lead.phone, lead.website]
    return [
        str(rank),
        *map(neutralize_cell, text),
        format_decimal(lead.rating, 2),
        str(lead.review_count),
        str(lead.confidence_score),
        neutralize_cell(lead.email),
        neutralize_cell(lead.email_status),
        "true" if lead.from_cache else "false",
        format_micros(lead_micros(lead)),
        neutralize_cell(by_provider),
        neutralize_cell(lead.id),
        neutralize_cell(lead.place_id),
        neutralize_cell(lead.campaign_id),
        neutralize_cell(lead.email_source),
    ]


def leads_csv(leads: Iterable[jobs_pb2.Lead]) -> str:
    """RFC 4180: a header row, then one record per lead in order; CRLF line ends, fields
    quoted only when they hold a comma, a quote or a line break (quotes doubled)."""
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(lead_csv_row(rank, lead) for rank, lead in enumerate(leads, start=1))
    return out.getvalue()


def leads_json(leads: Iterable[jobs_pb2.Lead]) -> str:
    """One JSON array of the leads (proto field names, every field), on one line."""
    return to_json([to_dict(lead) for lead in leads])


def leads_document(leads: Sequence[jobs_pb2.Lead], fmt: str) -> str:
    """The leads in ``fmt`` (one of :data:`LEAD_FORMATS`), ending with a line break."""
    if fmt == "csv":
        return leads_csv(leads)
    if fmt == "json":
        return leads_json(leads) + "\n"
    if fmt != "table":
        raise ValueError(f"unknown leads format {fmt!r}")
    if not leads:
        return "no leads\n"
    total = format_money(sum(lead_micros(lead) for lead in leads) / 1_000_000)
    return f"{leads_table(leads)}\n\n{len(leads)} leads, {total} in total\n"


def jobs_table(jobs: Iterable[jobs_pb2.Job]) -> str:
    headers = ("JOB", "STATUS", "STAGE", "PROGRESS", "QUERY", "LEADS", "COST", "CREATED")
    rows = [
        (
            job.id,
            status_name(job.status),
            stage_name(job.stage),
            f"{job.progress}%",
            f"{job.config.business_type} in {job.config.location}",
            str(job.metrics.qualified_leads),
            format_money(job.metrics.total_cost),
            job.created_at.ToDatetime().isoformat(timespec="seconds") + "Z"
            if job.created_at.seconds
            else "-",
        )
        for job in jobs
    ]
    return table(headers, rows, right=(3, 5, 6))


def to_dict(message: Message) -> dict[str, Any]:
    """A message as JSON-ready data, proto field names, defaults included."""
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(data: Message | Mapping[str, Any] | list[Any]) -> str:
    return json.dumps(to_dict(data) if isinstance(data, Message) else data, sort_keys=True)


def stack_banner(
    jobs_addr: str,
    nats_url: str,
    monitor_url: str,
    database_url: str,
    *,
    web_url: str = "",
    metrics_urls: Mapping[str, str] | None = None,
) -> str:
    """What ``make up`` prints once everything is ready: addresses (each process's
    Prometheus endpoint among them, by label) and commands to try."""
    body = (
        '{"config": {"business_type": "coffee shop", "location": "Seattle, WA", '
        '"max_results": 10, "min_confidence_score": 50, "verify_emails": true}}'
    )
    web = f"  web page, API  {web_url}/ ({web_url}/v1/openapi.json)\n" if web_url else ""
    metrics = "".join(
        f"  metrics        {url} ({label})\n" for label, url in (metrics_urls or {}).items()
    )
    return (
        f"\nprospect is up\n"
        f"{web}"
        f"  jobs gRPC API  {jobs_addr}\n"
        f"  NATS           {nats_url} (monitor {monitor_url})\n"
        f"  database       {database_url}\n"
        f"{metrics}\n"
        f"try:\n"
        f"  .venv/bin/prospect --addr {jobs_addr} submit 'coffee shop' 'Seattle, WA' --watch\n"
        f"  .venv/bin/prospect --addr {jobs_addr} list\n"
        f"  .venv/bin/prospect --addr {jobs_addr} leads JOB_ID\n"
        f"  grpcurl -plaintext {jobs_addr} list\n"
        f"  grpcurl -plaintext -d '{body}' {jobs_addr} prospect.v1.JobService/SubmitCampaign\n\n"
        f"Ctrl-C stops everything.\n"
    )


class LiveLine:
    """Shows successive lines: redrawn in place on a TTY, one per call otherwise."""

    def __init__(self, out: IO[str] | None = None, *, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self._open = False  # a redrawn line is on screen without its newline

    def show(self, text: str) -> None:
        if not self.tty:
            self.out.write(text + "\n")
        else:
            # Never wider than the terminal: a wrapped line cannot be redrawn with \r.
            columns = shutil.get_terminal_size((100, 24)).columns
            if len(text) >= columns:
                text = text[: max(1, columns - 2)] + "…"
            self.out.write("\r" + text + "\x1b[K")
            self._open = True
        self.out.flush()

    def note(self, text: str) -> None:
        """A line that stays (reconnect notices and such), kept apart from the live line."""
        self.finish()
        self.out.write(text + "\n")
        self.out.flush()

    def finish(self) -> None:
        """End the live line so later output starts on a fresh one."""
        if self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False
