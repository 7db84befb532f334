"""What a new user meets first: filters that apply or are refused, the right ledger, a taken port, `| head`."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tokenctl.cli.main import _parser, main
from tokenctl.cli.parsing import all_parsers
from tokenctl.ledger.writer import LedgerWriter
from tokenctl.testing.synthetic import synthetic_entries

NOW = 1_900_000_000.0  # 2030-03-17: far from any date the suite is run on


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("first-minute") / "ledger.db")
    writer = LedgerWriter(path)
    writer.start()
    for entry in synthetic_entries(600, start=NOW - 20 * 86400, days=19.9):
        writer.record(entry)
    writer.close()
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args), clock=lambda: NOW)
    out, err = capsys.readouterr()
    return code, out, err


def breakdown(capsys: pytest.CaptureFixture[str], ledger: str, *args: str) -> list[dict[str, str]]:
    code, out, err = run(capsys, "report", *args, "--format", "json", "--ledger", ledger)
    assert code == 0, err
    return json.loads(out)


def test_breakdown_filters_apply(ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
    everyone = breakdown(capsys, ledger, "--by", "user")
    web_team = breakdown(capsys, ledger, "--by", "user", "--team", "payments")
    assert web_team and len(web_team) < len(everyone)
    assert all(row["group"].startswith("payments-") for row in web_team)
    assert breakdown(capsys, ledger, "--by", "team", "--start", "2031-01-01") == []
    one_day = breakdown(capsys, ledger, "--by", "day", "--start", "2030-03-10", "--end", "2030-03-10")
    assert [row["group"][:10] for row in one_day] in ([], ["2030-03-10"])
    recent = breakdown(capsys, ledger, "--by", "team", "--since", "2d")
    total = breakdown(capsys, ledger, "--by", "team")
    assert sum(r["requests"] for r in recent) < sum(r["requests"] for r in total)


def test_options_a_view_cannot_apply_are_refused(ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "report", "savings", "--since", "1h", "--ledger", ledger)
    assert code == 2 and out == "" and "--since applies to the breakdown" in err
    code, _, err = run(capsys, "report", "overview", "--start", "2030-03-01", "--ledger", ledger)
    assert code == 2 and "do not apply" in err
    code, _, err = run(capsys, "report", "--start", "2030-03-01", "--since", "1d", "--ledger", ledger)
    assert code == 2 and "not both" in err
    code, _, err = run(capsys, "report", "--start", "March", "--ledger", ledger)
    assert code == 2 and "expected a date" in err


def test_views_use_the_injected_clock(ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", "overview", "--format", "json", "--ledger", ledger)
    data = json.loads(out)
    assert code == 0 and data["today"] == "2030-03-17" and data["month_requests"] > 0


def test_an_empty_csv_still_has_its_header(ledger: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "report", "--by", "user", "--team", "nobody", "--format", "csv", "--ledger", ledger)
    assert code == 0 and list(csv.reader(io.StringIO(out))) == [
        [
            "user",
            "requests",
            "input_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "output_tokens",
            "reasoning_tokens",
            "cost_usd",
            "unpriced_requests",
        ]
    ]
    code, out, _ = run(capsys, "report", "sessions", "--team", "nobody", "--format", "csv", "--ledger", ledger)
    assert code == 0 and out.strip() == "section"


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty directory with no config around, as when a command is run in the wrong place."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TOKENCTL_CONFIG", raising=False)
    yield tmp_path


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "list"],
        ["keys", "create", "--user", "a"],
        ["report"],
        ["budgets", "list"],
        ["audit"],
        ["report", "overview"],
    ],
)
def test_commands_elsewhere_say_where_they_looked_and_create_nothing(
    elsewhere: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, out, err = run(capsys, *command)
    assert code == 2 and out == ""
    assert "no ledger at" in err and str(elsewhere) in err and "tokenctl migrate" in err
    assert list(elsewhere.iterdir()) == []


def test_the_ledger_is_created_only_where_asked(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "keys", "list", "--ledger", "missing.db")[0] == 2
    assert not (elsewhere / "missing.db").exists()
    assert run(capsys, "keys", "create", "--user", "a", "--ledger", "new.db")[0] == 0  # a path given: created
    assert (elsewhere / "new.db").exists()
    assert run(capsys, "migrate")[0] == 0 and (elsewhere / "tokenctl.db").exists()
    assert run(capsys, "keys", "list")[0] == 0


def test_config_is_accepted_after_the_command(elsewhere: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (elsewhere / "gw").mkdir()
    config = elsewhere / "gw" / "c.yaml"
    config.write_text("ledger: {path: team.db}\n")
    assert run(capsys, "keys", "create", "--user", "carol", "--config", str(config))[0] == 0
    assert (elsewhere / "gw" / "team.db").exists()
    for args in (["--config", str(config), "keys", "list"], ["keys", "list", "--config", str(config)]):
        code, out, _ = run(capsys, *args, "--format", "json")
        assert code == 0 and [k["user"] for k in json.loads(out)] == ["carol"]


def _actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    for p in all_parsers(parser):
        for action in p._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                yield p.prog, action


def test_every_flag_has_a_help_text_and_shows_its_default() -> None:
    missing = [f"{prog} {action.dest}" for prog, action in _actions(_parser()) if not action.help]
    assert missing == []
    for p in all_parsers(_parser()):
        text = p.format_help()
        assert "(default: None)" not in text and "(default: False)" not in text
    report = next(p for p in all_parsers(_parser()) if p.prog.endswith(" report"))
    assert "(default: table)" in report.format_help()


def _cli(*args: str, cwd: Path, stdin: int | None = None, **popen: object) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TOKENCTL_CONFIG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "tokenctl", *args],
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,
    )  # type: ignore[call-overload]


def test_a_taken_port_is_one_clear_line_and_creates_nothing(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _cli("serve", "--port", str(port), "--ledger", str(tmp_path / "l.db"), cwd=tmp_path)
        _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1
    assert lines[-1].startswith("tokenctl: error: cannot listen on 127.0.0.1:") and "already in use" in lines[-1]
    assert "Traceback" not in err.decode()
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_postgresql_ledger_is_one_clear_line(tmp_path: Path) -> None:
    dead = f"postgresql://tokenctl:secret@127.0.0.1:{free_port()}/tokenctl"
    config = tmp_path / "tokenctl.yaml"
    config.write_text(f"ledger: {{url: '{dead}', journal_dir: '{tmp_path / 'journal'}'}}\n")
    for command in (("serve", "--port", str(free_port())), ("report",), ("keys", "list")):
        proc = _cli("--config", str(config), *command, cwd=tmp_path)
        _, err = proc.communicate(timeout=60)
        last = err.decode().strip().splitlines()[-1]
        assert proc.returncode == 1, (command, err)
        assert last.startswith("tokenctl: error: the ledger cannot be reached: PostgreSQL ledger"), last
        assert "Connection refused" in last and "secret" not in err.decode() and "Traceback" not in err.decode()


def test_several_workers_without_a_shared_store_are_refused(tmp_path: Path) -> None:
    proc = _cli("serve", "--workers", "2", "--ledger", str(tmp_path / "l.db"), cwd=tmp_path)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "--workers 2 needs a shared budget store (store.redis_url)" in err.decode()


def test_report_into_head_has_no_broken_pipe(ledger: str, tmp_path: Path) -> None:
    """`tokenctl report | head`: the reader goes away before the report is written (closed at once here)."""
    report = _cli("report", "--by", "session", "--ledger", ledger, cwd=tmp_path)
    assert report.stdout is not None
    report.stdout.close()
    _, err = report.communicate(timeout=60)
    assert report.returncode == 0 and b"BrokenPipe" not in err and b"Traceback" not in err, err
    head = subprocess.run(
        f"{sys.executable} -m tokenctl report --by session --ledger {ledger} | head -n 2",
        shell=True,
        capture_output=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert len(head.stdout.splitlines()) == 2 and b"Traceback" not in head.stderr


def _serve_proc(tmp_path: Path, port: int, ledger: Path, grace: int = 2) -> subprocess.Popen[bytes]:
    config = tmp_path / f"gw{port}.yaml"
    config.write_text(f"server: {{port: {port}, shutdown_grace_seconds: {grace}}}\nledger: {{path: {ledger}}}\n")
    return _cli("--config", str(config), "serve", cwd=tmp_path)


def _wait_http(port: int, timeout: float = 30) -> bool:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def test_a_second_gateway_on_the_same_ledger_refuses_to_start(tmp_path: Path) -> None:
    """Two gateways on one ledger would each enforce every budget alone (double the cap)."""
    from tests.conftest import free_port

    ledger = tmp_path / "shared.db"
    first_port, second_port = free_port(), free_port()
    first = _serve_proc(tmp_path, first_port, ledger)
    try:
        assert _wait_http(first_port)
        second = _serve_proc(tmp_path, second_port, ledger, grace=0)  # waits grace + 5 s for the lock, then gives up
        _, err = second.communicate(timeout=60)
        assert second.returncode == 1
        last = err.decode().strip().splitlines()[-1]
        assert last.startswith("tokenctl: error: another tokenctl process (pid") and str(first.pid) in last
    finally:
        first.terminate()
        first.wait(30)
    restarted = _serve_proc(tmp_path, second_port, ledger)  # the lock went with the first process
    try:
        assert _wait_http(second_port)
    finally:
        restarted.terminate()
        restarted.wait(30)
