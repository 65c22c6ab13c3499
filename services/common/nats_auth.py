"""Who may do what on NATS: one identity per service, each with only the subjects it needs.

The bus is a trust boundary (docs/design.md, "Security model"). nats-server refuses a
connection without credentials, and each service connects as its own user whose
permissions are listed here once. The local stack (:mod:`services.cli.stack`) and the
Kubernetes manifests (``deploy/k8s/base/nats-authorization.conf``, which a test keeps equal
to :func:`authorization_conf`) both use this table. Passwords are never in the config:
it names environment variables (``$NATS_JOBS_PASSWORD``...) that nats-server resolves
at start-up, from a Secret in Kubernetes or from the launcher's environment locally.

What the table keeps true:

* only the jobs service uses the JetStream API beyond its own pull consumers and the
  buckets' reads (it makes the streams, consumers and buckets, so it alone can delete
  them), publishes tasks (``prospect.work.>``), snapshots (``prospect.updates.*``) and
  stop notices, and writes the cancellation bucket;
* a worker pulls only its own consumer and publishes reports (``prospect.events.<job>``,
  one token: the partitioned subjects the stream stores are out of reach), writes only the
  buckets its own work keeps (spend ledger, rate limits, and the discovery memo or the
  enrichment cache), and reads nobody's reports, snapshots or tasks;
* each identity has its own inbox prefix (``_INBOX_<user>``) and may subscribe only
  there, so no one reads the replies, pulled messages or acks meant for another.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from services.common import bus

JOBS, DISCOVERY, ENRICHMENT = "jobs", "discovery", "enrichment"
# A user with every permission, only ever added for test suites that play several roles
# on one connection (LocalCredentials(superuser=True)); never in the stack or manifests.
SUPERUSER = "test-superuser"


@dataclass(frozen=True, slots=True)
class Identity:
    """One NATS user: the subjects it may publish and subscribe to (allow lists: all
    else is refused by the server)."""

    user: str
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    @property
    def inbox_prefix(self) -> str:
        return bus.inbox_prefix(self.user)

    @property
    def password_env(self) -> str:
        """The environment variable nats-server reads this user's password from."""
        return _password_env(self.user)


def _password_env(user: str) -> str:
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


def _reads(*buckets: str) -> tuple[str, ...]:
    """What opening and reading a key-value bucket takes: its stream's info and a get."""
    out: list[str] = []
    for bucket in buckets:
        stream = f"KV_{bucket}"
        out += [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}",
        ]
    return tuple(out)


def _writes(*buckets: str) -> tuple[str, ...]:
    """Reading and writing a key-value bucket (a put publishes on ``$KV.<bucket>.<key>``)."""
    return (*_reads(*buckets), *(f"$KV.{bucket}.>" for bucket in buckets))


def _worker(user: str, consumer: str, own_buckets: tuple[str, ...]) -> Identity:
    return Identity(
        user=user,
        publish=(
            "prospect.events.*",
            f"$JS.API.CONSUMER.INFO.{bus.WORK_STREAM}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{bus.WORK_STREAM}.{consumer}",
            f"$JS.ACK.{bus.WORK_STREAM}.{consumer}.>",
            *_reads(bus.CANCEL_BUCKET),
            *_writes(bus.ALLOWANCE_BUCKET, bus.RATE_LIMIT_BUCKET, *own_buckets),
        ),
        subscribe=(f"{bus.inbox_prefix(user)}.>", bus.CANCEL_SUBJECT),
    )


IDENTITIES: dict[str, Identity] = {
    JOBS: Identity(
        user=JOBS,
        publish=(
            "$JS.API.>",  # the topology, its report consumers, the buckets
            f"$JS.ACK.{bus.EVENTS_STREAM}.>",
            "$JS.FC.>",  # flow control of the membership bucket's watch
            "prospect.work.>",
            "prospect.updates.*",
            bus.CANCEL_SUBJECT,
            f"$KV.{bus.CANCEL_BUCKET}.>",
            f"$KV.{bus.MEMBERS_BUCKET}.>",
        ),
        subscribe=(f"{bus.inbox_prefix(JOBS)}.>", bus.UPDATES_WILDCARD),
    ),
    DISCOVERY: _worker(DISCOVERY, bus.DISCOVERY_CONSUMER, (bus.DISCOVERY_BUCKET,)),
    ENRICHMENT: _worker(ENRICHMENT, bus.ENRICHMENT_CONSUMER, (bus.CACHE_BUCKET,)),
}


def _quoted(subjects: tuple[str, ...]) -> str:
    return "[" + ", ".join(f'"{s}"' for s in subjects) + "]"


def authorization_conf(*, superuser: bool = False) -> str:
    """nats-server's ``authorization`` block for every identity, passwords by reference
    (and the tests' :data:`SUPERUSER`, with ``superuser``)."""
    lines = [
        "# Generated from services/common/nats_auth.py (python -m services.common.nats_auth):",
        "# one user per service, each allowed only the subjects it needs. Passwords are",
        "# read from the environment ($NATS_<USER>_PASSWORD), never written here.",
        "authorization {",
        "  users = [",
    ]
    for identity in IDENTITIES.values():
        lines += [
            "    {",
            f"      user: {identity.user}",
            f"      password: ${identity.password_env}",
            "      permissions: {",
            f"        publish: {{ allow: {_quoted(identity.publish)} }}",
            f"        subscribe: {{ allow: {_quoted(identity.subscribe)} }}",
            "      }",
            "    }",
        ]
    if superuser:
        lines += [f"    {{ user: {SUPERUSER}, password: ${_password_env(SUPERUSER)} }}"]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


class LocalCredentials:
    """Fresh random passwords for every identity, for a nats-server this process starts:
    given to it and to each service through the environment, never printed."""

    def __init__(self, *, superuser: bool = False) -> None:
        self.superuser = superuser
        users = [*IDENTITIES, *([SUPERUSER] if superuser else [])]
        # Letters and digits, a letter first: nats-server parses an environment variable's
        # value as a config value, so "-..." or all digits would not be a string.
        self._passwords = {user: f"p{secrets.token_hex(24)}" for user in users}

    def server_env(self) -> dict[str, str]:
        """What nats-server's environment needs to resolve :func:`authorization_conf`."""
        return {_password_env(user): p for user, p in self._passwords.items()}

    def service_env(self, identity: str) -> dict[str, str]:
        """NATS_USER and NATS_PASSWORD of ``identity``, for a service's environment."""
        if identity not in self._passwords:
            raise KeyError(f"no NATS user {identity!r} on this server")
        return {"NATS_USER": identity, "NATS_PASSWORD": self._passwords[identity]}


if __name__ == "__main__":
    print(authorization_conf(), end="")
