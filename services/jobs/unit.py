"""One write transaction of the jobs service, written with Core statements.

Applying a report is a few attribute changes, yet the ORM's unit of work (identity map,
autoflush before each query, per-object flush bookkeeping) cost several milliseconds per
report and made the jobs service the pipeline's bottleneck. So a write transaction loads
rows with plain SELECTs into *transient* model objects (the classes the API reads, never
attached to a session), changes them in memory, and writes the differences back: an INSERT
per table for new rows (executemany), an UPDATE by key for changed leads, and for each
changed job an UPDATE guarded by the version it was loaded at, so two replicas applying
reports to one job never overwrite each other (:class:`Conflict`; the caller starts over).

A unit is synchronous code on a synchronous connection: :class:`services.jobs.db.Writer`
runs it, on SQLite directly (statements take microseconds; the async driver's thread hops
cost a millisecond each), on PostgreSQL through ``run_sync`` over asyncpg.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    cast,
    column,
    func,
    insert,
    select,
    update,
    values,
)

from services.jobs.models import (
    AppliedReportRow,
    Base,
    CampaignRow,
    JobEventRow,
    JobRow,
    LeadRow,
    M,
    OutboxRow,
    TaskRow,
    WebhookDeliveryRow,
    transient,
    utcnow,
)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


JOBS = _table(JobRow)
LEADS = _table(LeadRow)
CAMPAIGNS = _table(CampaignRow)
OUTBOX = _table(OutboxRow)
APPLIED = _table(AppliedReportRow)
TASKS = _table(TaskRow)
JOB_EVENTS = _table(JobEventRow)
WEBHOOK_DELIVERIES = _table(WebhookDeliveryRow)

# What a transaction may change on a loaded row (everything else is fixed at insert).
_JOB_CHANGES = (
    "status",
    "stage",
    "progress",
    "version",
    "metrics",
    "error",
    "message",
    "attempts",
    "started_at",
    "completed_at",
    "updated_at",
    "stopping_since",
    "retried_by",
)
_LEAD_CHANGES = (
    "state",
    "email",
    "email_status",
    "from_cache",
    "email_source",
    "cost_by_step",
    "cost_micros",
    "cost_by_provider",
    "updated_at",
)
# Jobs at work (they count against MAX_ACTIVE_JOBS_PER_USER), jobs stopping (no new work
# starts for them: a cancel frees its slot at once), and both: the jobs not final yet.
ACTIVE = ("PENDING", "PROCESSING")
STOPPING = ("CANCELLING", "FAILING")
UNFINISHED = ACTIVE + STOPPING

# Statements built once: SQLAlchemy caches a statement's compiled form under a key it derives
# by walking the statement, and remembers that key on the object, so a statement reused is
# cheaper than one built per call (the lists go in as expanding parameters).
_JOBS_BY_ID = select(JOBS).where(JOBS.c.id.in_(bindparam("ids", expanding=True)))
_APPLIED_IDS = select(APPLIED.c.report_id).where(
    APPLIED.c.report_id.in_(bindparam("ids", expanding=True))
)
_LEADS_BY_ID = select(LEADS).where(LEADS.c.id.in_(bindparam("ids", expanding=True)))
_TASKS_BY_ID = select(TASKS).where(TASKS.c.id.in_(bindparam("ids", expanding=True)))
_LEADS_OF_JOBS = (
    select(LEADS)
    .where(LEADS.c.job_id.in_(bindparam("job_ids", expanding=True)))
    .order_by(LEADS.c.job_id, LEADS.c.rank)
)
# Both columns of the (user_id, idempotency_key) unique index, so the lookup uses it.
_JOBS_BY_KEY = select(JOBS).where(
    JOBS.c.user_id.in_(bindparam("users", expanding=True)),
    JOBS.c.idempotency_key.in_(bindparam("keys", expanding=True)),
)
_ACTIVE_JOBS = (
    select(JOBS.c.user_id, func.count())
    .where(
        JOBS.c.user_id.in_(bindparam("users", expanding=True)),
        JOBS.c.status.in_(ACTIVE),
    )
    .group_by(JOBS.c.user_id)
)
_INSERT = {
    table: insert(table)
    for table in (JOBS, CAMPAIGNS, LEADS, OUTBOX, APPLIED, TASKS, JOB_EVENTS, WEBHOOK_DELIVERIES)
}
# What a report changes on its task.
_TASK_CHANGES = ("spent_micros", "closed")
_UPDATE_TASK = (
    update(TASKS)
    .where(TASKS.c.id == bindparam("b_id"))
    .values({f: bindparam(f"v_{f}") for f in _TASK_CHANGES})
)
_UPDATE_JOB = (
    update(JOBS)
    .where(JOBS.c.id == bindparam("b_id"), JOBS.c.version == bindparam("b_version"))
    .values({f: bindparam(f"v_{f}") for f in _JOB_CHANGES})
)
_UPDATE_LEAD = (
    update(LEADS)
    .where(LEADS.c.id == bindparam("b_id"))
    .values({f: bindparam(f"v_{f}") for f in _LEAD_CHANGES})
)


class Conflict(Exception):
    """Another replica changed a job since this transaction read it."""


def _values(obj: Base, table: Table) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in table.columns}


def _snapshot(obj: Base, fields: tuple[str, ...]) -> tuple[Any, ...]:
    # Copies of the JSON dicts, so changes made in place are seen as changes.
    return tuple(dict(v) if isinstance(v, dict) else v for v in (getattr(obj, f) for f in fields))


class Unit:
    """Rows read and written by one transaction on ``conn``."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._jobs: dict[str, JobRow | None] = {}
        self._job_loaded: dict[str, tuple[Any, ...]] = {}
        self._leads: dict[str, LeadRow | None] = {}
        self._lead_loaded: dict[str, tuple[Any, ...]] = {}
        self._leads_of: dict[str, list[LeadRow]] = {}  # a job's complete list, by rank
        self._new_jobs: list[JobRow] = []
        self._new_campaigns: list[CampaignRow] = []
        self._new_leads: list[LeadRow] = []
        self._outbox: list[OutboxRow] = []
        self._tasks: dict[str, TaskRow | None] = {}
        self._task_loaded: dict[str, tuple[Any, ...]] = {}
        self._new_tasks: list[TaskRow] = []
        self._new_events: list[JobEventRow] = []
        self._new_deliveries: list[WebhookDeliveryRow] = []
        self._applied: list[dict[str, Any]] = []
        self._campaigns: dict[str, dict[str, Any]] = {}
        self.applied_ids: set[str] = set()  # report ids applied, before or in this unit

    @property
    def connection(self) -> Connection:
        """The transaction's connection, for statements no method here makes (a
        schedule's known places: services/jobs/scheduler.py)."""
        return self._conn

    # Reading ----------------------------------------------------------------------------

    def _select(self, model: type[M], query: Any, **params: Any) -> list[M]:
        return [transient(model, row._mapping) for row in self._conn.execute(query, params)]

    def load_jobs(self, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self._jobs]
        if not wanted:
            return
        for job in self._select(JobRow, _JOBS_BY_ID, ids=wanted):
            self._jobs[job.id] = job
            self._job_loaded[job.id] = _snapshot(job, _JOB_CHANGES)
        for job_id in wanted:
            self._jobs.setdefault(job_id, None)

    def job(self, job_id: str) -> JobRow | None:
        self.load_jobs([job_id])
        return self._jobs[job_id]

    def load_applied(self, report_ids: Iterable[str]) -> None:
        ids = list(set(report_ids))
        if ids:
            self.applied_ids.update(self._conn.scalars(_APPLIED_IDS, {"ids": ids}).all())

    def mark_applied(self, report_id: str, job_id: str) -> None:
        self.applied_ids.add(report_id)
        self._applied.append({"report_id": report_id, "job_id": job_id, "applied_at": utcnow()})

    def _track_lead(self, lead: LeadRow) -> LeadRow:
        """The unit's one object for this lead (the first one loaded wins)."""
        known = self._leads.get(lead.id)
        if known is not None:
            return known
        self._leads[lead.id] = lead
        self._lead_loaded[lead.id] = _snapshot(lead, _LEAD_CHANGES)
        return lead

    def load_leads(self, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self._leads]
        if not wanted:
            return
        for lead in self._select(LeadRow, _LEADS_BY_ID, ids=wanted):
            self._track_lead(lead)
        for lead_id in wanted:
            self._leads.setdefault(lead_id, None)

    def load_tasks(self, ids: Iterable[str]) -> None:
        wanted = [i for i in set(ids) if i not in self._tasks]
        if not wanted:
            return
        for task in self._select(TaskRow, _TASKS_BY_ID, ids=wanted):
            self._tasks[task.id] = task
            self._task_loaded[task.id] = _snapshot(task, _TASK_CHANGES)
        for task_id in wanted:
            self._tasks.setdefault(task_id, None)

    def task(self, task_id: str) -> TaskRow | None:
        """The recorded task ``task_id`` (None: the jobs service never queued it)."""
        self.load_tasks([task_id])
        return self._tasks[task_id]

    def lead(self, lead_id: str) -> LeadRow | None:
        self.load_leads([lead_id])
        return self._leads[lead_id]

    def leads_of(self, job_id: str) -> list[LeadRow]:
        """Every lead of ``job_id`` by rank, those added in this unit included."""
        self.load_leads_of([job_id])
        return self._leads_of[job_id]

    def load_leads_of(self, job_ids: Iterable[str]) -> None:
        """Load the lead lists of ``job_ids`` for :meth:`leads_of`, in one query for all
        (a batch's discovery results read theirs together)."""
        wanted = [i for i in set(job_ids) if i not in self._leads_of]
        if not wanted:
            return
        lists: dict[str, list[LeadRow]] = {job_id: [] for job_id in wanted}
        for lead in self._select(LeadRow, _LEADS_OF_JOBS, job_ids=wanted):
            lists[lead.job_id].append(self._track_lead(lead))
        for lead in self._new_leads:
            if lead.job_id in lists:
                lists[lead.job_id].append(lead)
        for job_id, leads in lists.items():
            self._leads_of[job_id] = sorted(leads, key=lambda lead: lead.rank)

    def jobs_by_keys(self, pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], JobRow]:
        """Jobs already submitted under these (user, idempotency key) pairs."""
        pairs = set(pairs)
        if not pairs:
            return {}
        users = list({user for user, _ in pairs})
        keys = list({key for _, key in pairs})
        return {
            (job.user_id, job.idempotency_key or ""): job
            for job in self._select(JobRow, _JOBS_BY_KEY, users=users, keys=keys)
            if (job.user_id, job.idempotency_key) in pairs
        }

    def active_jobs(self, user_ids: Iterable[str]) -> dict[str, int]:
        """PENDING and PROCESSING jobs per user."""
        users = list(set(user_ids))
        counts = {user: 0 for user in users}
        rows = self._conn.execute(_ACTIVE_JOBS, {"users": users}).all()
        counts.update({user: n for user, n in rows})
        return counts

    # Writing ----------------------------------------------------------------------------

    def add_job(self, job: JobRow, campaign: CampaignRow) -> None:
        self._new_jobs.append(job)
        self._new_campaigns.append(campaign)

    def add_leads(self, leads: Iterable[LeadRow]) -> None:
        touched: set[str] = set()
        for lead in leads:
            self._new_leads.append(lead)
            self._leads[lead.id] = lead
            if lead.job_id in self._leads_of:
                self._leads_of[lead.job_id].append(lead)
                touched.add(lead.job_id)
        for job_id in touched:  # by rank again, once per list
            self._leads_of[job_id].sort(key=lambda known: known.rank)

    def add_task(self, task: TaskRow) -> None:
        self._new_tasks.append(task)
        self._tasks[task.id] = task

    def add_outbox(self, rows: Iterable[OutboxRow]) -> None:
        self._outbox.extend(rows)

    def add_events(self, rows: Iterable[JobEventRow]) -> None:
        """Entries of jobs' histories (services/jobs/history.py)."""
        self._new_events.extend(rows)

    def add_delivery(self, delivery: WebhookDeliveryRow) -> None:
        """A completion webhook to send once committed (services/jobs/webhooks.py)."""
        self._new_deliveries.append(delivery)

    @property
    def deliveries_queued(self) -> int:
        """Completion webhooks this unit queues (sent once it commits)."""
        return len(self._new_deliveries)

    def update_campaign(self, campaign_id: str, **values: Any) -> None:
        self._campaigns.setdefault(campaign_id, {}).update(values)

    def flush(self) -> None:
        """Write every change; :class:`Conflict` if a job changed under this unit."""
        conn = self._conn
        new_lead_ids = {lead.id for lead in self._new_leads}
        for table, rows in (
            (JOBS, self._new_jobs),
            (CAMPAIGNS, self._new_campaigns),
            (LEADS, self._new_leads),
            (OUTBOX, self._outbox),
            (TASKS, self._new_tasks),
            (JOB_EVENTS, self._new_events),
            (WEBHOOK_DELIVERIES, self._new_deliveries),
        ):
            if rows:
                conn.execute(_INSERT[table], [_values(row, table) for row in rows])
        if self._applied:
            conn.execute(_INSERT[APPLIED], self._applied)
        jobs = [
            {
                "b_id": job_id,
                "b_version": loaded[_JOB_CHANGES.index("version")],
                **{f"v_{f}": getattr(job, f) for f in _JOB_CHANGES},
            }
            for job_id, loaded in self._job_loaded.items()
            if (job := self._jobs[job_id]) is not None and _snapshot(job, _JOB_CHANGES) != loaded
        ]
        if jobs:
            self._update_jobs(jobs)
        changed = [
            {"b_id": lead_id, **{f"v_{f}": getattr(lead, f) for f in _LEAD_CHANGES}}
            for lead_id, lead in self._leads.items()
            if lead is not None
            and lead_id not in new_lead_ids
            and _snapshot(lead, _LEAD_CHANGES) != self._lead_loaded[lead_id]
        ]
        if changed:
            conn.execute(_UPDATE_LEAD, changed)
        tasks = [
            {"b_id": task_id, **{f"v_{f}": getattr(task, f) for f in _TASK_CHANGES}}
            for task_id, loaded in self._task_loaded.items()
            if (task := self._tasks[task_id]) is not None
            and _snapshot(task, _TASK_CHANGES) != loaded
        ]
        if tasks:
            conn.execute(_UPDATE_TASK, tasks)
        for campaign_id, changes in self._campaigns.items():  # a few per batch at most
            conn.execute(update(CAMPAIGNS).where(CAMPAIGNS.c.id == campaign_id).values(changes))

    def _update_jobs(self, params: list[dict[str, Any]]) -> None:
        """Each job's UPDATE guarded by the version it was loaded at: one executemany
        where the driver counts its rows (SQLite); on PostgreSQL one UPDATE ... FROM
        (VALUES ...) RETURNING for the whole batch (asyncpg's executemany counts no rows,
        and a statement per job was a round trip per job)."""
        if self._conn.dialect.supports_sane_multi_rowcount:
            updated = self._conn.execute(_UPDATE_JOB, params).rowcount
        elif self._conn.dialect.name == "postgresql":
            bound = {
                f"{name}_{i}": one[name] for i, one in enumerate(params) for name in _JOB_PARAMS
            }
            updated = len(self._conn.execute(_update_jobs_from(len(params)), bound).all())
        else:
            updated = sum(self._conn.execute(_UPDATE_JOB, one).rowcount for one in params)
        if updated != len(params):
            raise Conflict(f"{len(params) - updated} job(s) changed under this transaction")


# The parameters of a job's guarded UPDATE, in the order of _update_jobs_from's columns.
_JOB_PARAMS = ("b_id", "b_version", *(f"v_{f}" for f in _JOB_CHANGES))


@functools.lru_cache(maxsize=256)
def _update_jobs_from(count: int) -> Any:
    """One UPDATE of ``count`` jobs, each guarded by its version, returning the ids it
    updated; job ``i``'s values are bound as ``<param>_<i>`` (``_JOB_PARAMS``).

    Bound parameters, not the values themselves, and one statement per count: SQLAlchemy
    caches a compiled statement by its shape, and a VALUES list holding the data is a new
    shape every time (compiling it was a tenth of a jobs replica's CPU on PostgreSQL).
    Counts are bounded by the report batch, so the statements kept are too."""
    typed = [JOBS.c.id.type, JOBS.c.version.type, *(JOBS.c[f].type for f in _JOB_CHANGES)]
    named = list(zip(_JOB_PARAMS, typed, strict=True))
    given = values(*(column(n, t) for n, t in named), name="v")
    given = given.data(
        [tuple(bindparam(f"{n}_{i}", type_=t) for n, t in named) for i in range(count)]
    )
    return (
        update(JOBS)
        .where(JOBS.c.id == given.c.b_id, JOBS.c.version == given.c.b_version)
        # Cast: a column that is NULL in every row of the VALUES list is text to PostgreSQL.
        .values({f: cast(given.c[f"v_{f}"], JOBS.c[f].type) for f in _JOB_CHANGES})
        .returning(JOBS.c.id)
    )
