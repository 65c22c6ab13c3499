"""services.cli.main without a server: its options, its exit codes as documented, and how
it writes the leads (to stdout, or atomically to a file)."""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

import pytest

from prospect.v1 import jobs_pb2
from services.cli import main, render


@pytest.mark.parametrize(
    "spelling",
    ["completed", "COMPLETED", "Completed", "JOB_STATUS_COMPLETED", "job_status_completed"],
)
def test_status_in_any_case(spelling):
    assert main.job_status(spelling) == "JOB_STATUS_COMPLETED"
    assert main.parse_args(["list", "--status", spelling]).status == "JOB_STATUS_COMPLETED"


def test_every_status_name_is_a_job_status():
    for name in main.STATUS_CHOICES:
        assert jobs_pb2.JobStatus.Value(main.job_status(name)) != jobs_pb2.JOB_STATUS_UNSPECIFIED


@pytest.mark.parametrize("bad", ["done", "unspecified", "JOB_STATUS_UNSPECIFIED", ""])
def test_an_unknown_status_is_a_usage_error(bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["list", "--status", bad])
    assert exit_.value.code == 2
    assert f"invalid status {bad!r}" in capsys.readouterr().err


def test_help_epilog_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.rstrip().endswith(main.EXIT_CODES.rstrip())  # verbatim, not re-wrapped
    assert re.findall(r"^  (\d+) ", main.EXIT_CODES, re.MULTILINE) == ["0", "1", "2", "130"]


@pytest.mark.parametrize(
    ("argv", "fmt"),
    [
        (["leads", "J"], "table"),
        (["--json", "leads", "J"], "json"),
        (["leads", "J", "--format", "csv"], "csv"),
        (["--json", "leads", "J", "--format", "table"], "table"),
        (["submit", "a", "b", "--watch"], "table"),
        (["--json", "submit", "a", "b", "--watch", "--format", "csv", "--output", "f"], "csv"),
    ],
)
def test_leads_format(argv, fmt):
    assert main.leads_format(main.parse_args(argv)) == fmt


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["submit", "a", "b", "--format", "json"], "apply to the leads of --watch"),
        (["submit", "a", "b", "--output", "f.csv"], "apply to the leads of --watch"),
        (["--json", "submit", "a", "b", "--watch", "--format", "csv"], "needs --output FILE"),
        (["--json", "submit", "a", "b", "--watch", "--format", "table"], "needs --output FILE"),
        (["leads", "J", "--format", "xlsx"], "invalid choice: 'xlsx'"),
    ],
)
def test_leads_options_that_cannot_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main.parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def _args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"json": False, "format": None, "output": None, **kw})


LEADS = [
    jobs_pb2.Lead(business_name="Café Ümlaut", address="1 Rue, Paris", cost=0.5),
    jobs_pb2.Lead(business_name="=cmd()", cost=0.25),
]


def test_csv_on_stdout_is_utf8_bytes_with_crlf(capfdbinary):
    main.output_leads(_args(format="csv"), LEADS)
    out = capfdbinary.readouterr().out
    assert out == render.leads_csv(LEADS).encode("utf-8")
    assert "Café Ümlaut".encode() in out and b"\r\n2,'=cmd()," in out


def test_output_file_is_written_whole_with_a_note(tmp_path, capsys):
    path = tmp_path / "leads.csv"
    main.output_leads(_args(format="csv", output=str(path)), LEADS)
    assert path.read_bytes() == render.leads_csv(LEADS).encode("utf-8")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"wrote 2 leads to {path}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert os.listdir(tmp_path) == ["leads.csv"]


def test_output_dash_is_stdout(capsys):
    main.output_leads(_args(format="json", output="-"), LEADS)
    assert capsys.readouterr().out == render.leads_json(LEADS) + "\n"


def test_write_atomically_replaces_and_keeps_the_mode(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    path.chmod(0o640)
    main.write_atomically(path, "new\r\n")
    assert path.read_bytes() == b"new\r\n"  # line ends as given
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["out.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(UnicodeEncodeError):
        main.write_atomically(path, "half written \ud800")  # not encodable: fails mid-write
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_an_unwritable_output_is_an_output_error(tmp_path: Path):
    target = tmp_path / "no-such-dir" / "leads.csv"
    with pytest.raises(main.OutputError, match=rf"^cannot write {re.escape(str(target))}: "):
        main.output_leads(_args(format="csv", output=str(target)), LEADS)
    with pytest.raises(main.OutputError):
        main.output_leads(_args(format="csv", output=str(tmp_path)), LEADS)  # a directory
    assert os.listdir(tmp_path) == []


def test_a_missing_tls_ca_file_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main.main(["--tls-ca", "/nonexistent/ca.pem", "list"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --tls-ca /nonexistent/ca.pem: no such file\n"
