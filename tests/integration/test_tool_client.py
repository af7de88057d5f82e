"""``mupdate-client`` as a subprocess (``python -m mupdate.tools.client``) against our real
master and slave (twistd subprocesses): every subcommand, text columns and JSON checked
field by field, exit codes, password sources, and ``raw`` driven through a pseudo-terminal.

Every wait is bounded: reads from the tool's pipes go through ``select`` with a deadline,
processes are waited on with a timeout; nothing sleeps.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import mupdate
from tests.helpers.cyrus import PortAllocator, repo_root, wait_until
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.ourslave import OurSlave, our_slave_available
from tests.helpers.rawmupdate import Entry
from tests.helpers.toolclient import (
    PASSWORD_VAR,
    argv,
    b64,
    columns,
    finish,
    listing,
    one_error_line,
    run_tool,
    start_watch,
    status_fields,
    tool_env,
    write,
)

ODD_NAME = b"user.\xe9t\xe9"  # Latin-1, not UTF-8
ODD_LOCATION = b"be1!\xff"
ALICE_ACL = "alice\tlrswipkxtecdan\tanyone\tlrs\t"
DATA: list[tuple[bytes, ...]] = [
    (b"ACTIVATE", b"user.alice", b"be1!default", ALICE_ACL.encode()),
    (b"RESERVE", b"user.bob", b"be2!p"),
    (b"ACTIVATE", ODD_NAME, ODD_LOCATION, b""),
    (b"ACTIVATE", b"user.with space", b"be10!x", b"carol\tlr\t"),
]

_WHY_NOT = our_master_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurMaster]:
    m = OurMaster(tmp_path_factory.mktemp("client-master"), servername="m1")
    m.start()
    try:
        write(m, *DATA)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def slave(master: OurMaster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurSlave]:
    why = our_slave_available()
    if why:
        pytest.skip(why)
    s = OurSlave(
        tmp_path_factory.mktemp("client-slave"),
        master_address=master.address,
        servername="fe1",
        retry_delay=1,
        extra_config={"mupdate_retry_max": "3"},
    )
    s.start()
    try:
        expected = listing(master)
        wait_until(lambda: listing(s) == expected, 30, "the slave's copy of the master")
        yield s
    finally:
        s.stop()


@pytest.fixture
def fresh_master(tmp_path: Path) -> Iterator[OurMaster]:
    """A master of its own for tests that write."""
    m = OurMaster(tmp_path / "master", servername="m2")
    m.start()
    try:
        write(m, *DATA)
        yield m
    finally:
        m.stop()


# ---------------------------------------------------------------- find


def test_find_prints_one_row_per_name_and_exits_1_when_one_is_missing(master):
    p = run_tool(master, "find", "user.alice", "user.nobody", "user.bob")
    assert p.returncode == 1
    assert columns(p.stdout.splitlines()) == [
        ("user.alice", "MAILBOX", "be1!default", "alice lrswipkxtecdan anyone lrs"),
        ("user.nobody", "MISSING", "-", "-"),
        ("user.bob", "RESERVE", "be2!p", "-"),
    ]
    assert one_error_line(p) == "mupdate-client: 1 of 3 name(s) not found"


def test_find_all_found_exits_0_and_json_is_exact(master):
    p = run_tool(master, "--json", "find", "user.bob", os.fsdecode(ODD_NAME))
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        {"kind": "reserve", "name": "user.bob", "location": "be2!p", "acl": None},
        {"kind": "mailbox", "name": b64(ODD_NAME), "location": b64(ODD_LOCATION), "acl": ""},
    ]


def test_find_json_reports_missing_names(master):
    p = run_tool(master, "find", "--json", "user.nobody")
    assert p.returncode == 1
    assert json.loads(p.stdout) == {
        "kind": "missing",
        "name": "user.nobody",
        "location": None,
        "acl": None,
    }


# ---------------------------------------------------------------- list


def expected_rows(entries: list[Entry]) -> list[tuple[str, str, str, str]]:
    shown = {
        b"user.alice": ("user.alice", "MAILBOX", "be1!default", "alice lrswipkxtecdan anyone lrs"),
        b"user.bob": ("user.bob", "RESERVE", "be2!p", "-"),
        ODD_NAME: ("user.\\xe9t\\xe9", "MAILBOX", "be1!\\xff", '""'),
        b"user.with space": ("user.with space", "MAILBOX", "be10!x", "carol lr"),
    }
    return [shown[e.name] for e in entries]


def test_list_text_columns_in_the_servers_order(master):
    p = run_tool(master, "list")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert columns(p.stdout.splitlines()) == expected_rows(listing(master))


def test_list_json_field_by_field(master):
    p = run_tool(master, "list", "--json")
    assert p.returncode == 0, p.stderr
    records = [json.loads(line) for line in p.stdout.splitlines()]
    by_name = {json.dumps(r["name"]): r for r in records}
    assert len(records) == len(DATA) == len(by_name)
    assert by_name['"user.alice"'] == {
        "kind": "mailbox",
        "name": "user.alice",
        "location": "be1!default",
        "acl": ALICE_ACL,
    }
    assert by_name['"user.bob"'] == {
        "kind": "reserve",
        "name": "user.bob",
        "location": "be2!p",
        "acl": None,
    }
    assert by_name[json.dumps(b64(ODD_NAME))] == {
        "kind": "mailbox",
        "name": b64(ODD_NAME),
        "location": b64(ODD_LOCATION),
        "acl": "",
    }
    assert by_name['"user.with space"']["acl"] == "carol\tlr\t"
    order = [e.name for e in listing(master)]
    decoded = [
        base64.b64decode(r["name"]["base64"]) if isinstance(r["name"], dict) else r["name"].encode()
        for r in records
    ]
    assert decoded == order


def test_list_prefix_is_a_location_prefix(master):
    p = run_tool(master, "--json", "list", "be1")
    assert p.returncode == 0, p.stderr
    names = sorted(json.dumps(json.loads(line)["name"]) for line in p.stdout.splitlines())
    assert names == sorted(['"user.alice"', json.dumps(b64(ODD_NAME)), '"user.with space"'])


def test_list_of_an_empty_prefix_match_prints_nothing(master):
    p = run_tool(master, "list", "nosuchserver")
    assert (p.returncode, p.stdout, p.stderr) == (0, "", "")


def test_list_on_the_slave_shows_the_masters_entries(master, slave):
    p = run_tool(slave, "list")
    assert p.returncode == 0, p.stderr
    assert columns(p.stdout.splitlines()) == expected_rows(listing(master))


# ---------------------------------------------------------------- status


def test_status_of_the_master(master):
    p = run_tool(master, "status")
    assert p.returncode == 0, p.stderr
    fields = status_fields(p.stdout)
    assert fields["server"] == master.address
    assert fields["servername"] == "m1"
    assert fields["implementation"] == "mupdate"
    assert fields["version"] == mupdate.__version__
    assert fields["role"] == "master"
    assert "PARTIAL-UPDATE" in fields["capabilities"]
    assert "PLAIN" in fields["mechanisms"].split()
    assert fields["entries"] == "4 (3 active, 1 reserved)"
    assert fields["  be1"] == "2 (2 active, 0 reserved)"
    assert fields["  be10"] == "1 (1 active, 0 reserved)"
    assert fields["  be2"] == "1 (0 active, 1 reserved)"
    assert fields["noop"].endswith(" ms")
    assert float(fields["noop"].split()[0]) >= 0


def test_status_json_of_the_master_field_by_field(master):
    p = run_tool(master, "status", "--json")
    assert (p.returncode, p.stderr) == (0, "")
    (line,) = p.stdout.splitlines()
    record = json.loads(line)
    noop_ms = record.pop("noop_ms")
    assert isinstance(noop_ms, float | int)
    assert 0 <= noop_ms < 20_000
    mechanisms = ["SCRAM-SHA-512", "SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"]
    assert record == {
        "kind": "status",
        "server": master.address,
        "servername": "m1",
        "implementation": "mupdate",
        "version": mupdate.__version__,
        "role": "master",
        "master": None,
        "capabilities": [
            {"name": "AUTH", "args": mechanisms},
            {"name": "PARTIAL-UPDATE", "args": []},
        ],
        "mechanisms": mechanisms,
        "entries": {
            "total": 4,
            "active": 3,
            "reserved": 1,
            "servers": [
                {"server": "be1", "active": 2, "reserved": 0},
                {"server": "be10", "active": 1, "reserved": 0},
                {"server": "be2", "active": 0, "reserved": 1},
            ],
        },
    }


def test_status_json_of_the_slave_names_its_master(master, slave):
    p = run_tool(slave, "status", "--json")
    assert p.returncode == 0, p.stderr
    (line,) = p.stdout.splitlines()
    record = json.loads(line)
    assert record["kind"] == "status"
    assert record["servername"] == "fe1"
    assert (record["role"], record["master"]) == ("slave", master.address)
    assert record["entries"] == {
        "total": 4,
        "active": 3,
        "reserved": 1,
        "servers": [
            {"server": "be1", "active": 2, "reserved": 0},
            {"server": "be10", "active": 1, "reserved": 0},
            {"server": "be2", "active": 0, "reserved": 1},
        ],
    }
    assert isinstance(record["noop_ms"], float | int)
    text = run_tool(slave, "status")
    assert status_fields(text.stdout)["role"] == f"slave of {master.address}"


# ---------------------------------------------------------------- watch


def test_watch_prints_the_dump_then_changes_until_count(fresh_master):
    proc, reader = start_watch(fresh_master, "--json", "--count", "2")
    try:
        dump = [json.loads(reader.line()) for _ in DATA]
        assert {r["change"] for r in dump} == {None}
        assert {
            "kind": "reserve",
            "name": "user.bob",
            "location": "be2!p",
            "acl": None,
            "change": None,
        } in dump
        write(
            fresh_master,
            (b"ACTIVATE", b"user.w1", b"be3!p", b"w\tlrs\t"),
            (b"DELETE", b"user.w1"),
        )
        changes = [json.loads(reader.line()) for _ in range(2)]
    finally:
        code, rest, err = finish(proc)
    assert changes == [
        {
            "kind": "mailbox",
            "name": "user.w1",
            "location": "be3!p",
            "acl": "w\tlrs\t",
            "change": "mailbox",
        },
        {"kind": "delete", "name": "user.w1", "location": None, "acl": None, "change": "delete"},
    ]
    assert (code, rest, err) == (0, "", "")


def test_watch_text_with_hosts_sees_only_their_changes(fresh_master):
    proc, reader = start_watch(fresh_master, "--count", "1", "be2")
    try:
        header = reader.line()
        assert header.split() == ["NAME", "STATE", "LOCATION", "ACL"]
        assert columns([header, reader.line()]) == [("user.bob", "RESERVE", "be2!p", "-")]
        write(
            fresh_master,
            (b"RESERVE", b"user.elsewhere", b"be1!p"),
            (b"RESERVE", b"user.here", b"be2!q"),
        )
        change = reader.line()
    finally:
        code, rest, err = finish(proc)
    # changes keep the dump's column widths; a longer cell pushes the rest right
    assert change.split() == ["user.here", "RESERVE", "be2!q", "-"]
    assert (code, rest, err) == (0, "", "")


def test_watch_changes_only_lines_up_with_the_header(fresh_master):
    """The dump is not shown, but its widths are used: changes line up under the header."""
    proc, reader = start_watch(fresh_master, "--changes-only", "--count", "1")
    try:
        header = reader.line()
        assert header == "NAME             STATE    LOCATION     ACL"
        write(fresh_master, (b"RESERVE", b"user.w", b"be2!p"))
        change = reader.line()
    finally:
        code, rest, err = finish(proc)
    assert columns([header, change]) == [("user.w", "RESERVE", "be2!p", "-")]
    assert (code, rest, err) == (0, "", "")


def test_watch_ends_cleanly_on_sigint(master):
    proc, reader = start_watch(master, "--changes-only")
    try:
        assert reader.line().split() == ["NAME", "STATE", "LOCATION", "ACL"]
        proc.send_signal(signal.SIGINT)
    finally:
        code, rest, err = finish(proc)
    assert (code, rest, err) == (0, "", "")


def test_watch_seconds_bounds_the_watch(master):
    started = time.monotonic()
    p = run_tool(master, "watch", "--json", "--seconds", "0.5")
    assert p.returncode == 0, p.stderr
    assert len(p.stdout.splitlines()) == len(DATA)
    assert time.monotonic() - started < 30


def test_watch_keepalive_noops_do_not_disturb_the_stream(master):
    p = run_tool(master, "watch", "--json", "--keepalive", "0.1", "--seconds", "1")
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert len(p.stdout.splitlines()) == len(DATA)


def test_watch_refused_by_the_server_exits_3(master):
    p = run_tool(master, "watch", *(f"be{i}" for i in range(31)))  # 31 hosts: BAD (§5.8)
    assert p.returncode == 3
    assert one_error_line(p) == f"mupdate-client: {master.address} answered BAD Extra arguments"


# ---------------------------------------------------------------- passwords, failures


def test_password_from_a_file(master, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("secret\n")
    p = run_tool(master, "--password-file", str(secret), "find", "user.bob", password=False)
    assert p.returncode == 0, p.stderr
    assert columns(p.stdout.splitlines()) == [("user.bob", "RESERVE", "be2!p", "-")]


def test_password_from_the_environment(master):
    p = run_tool(master, "find", "user.bob", env=tool_env(**{PASSWORD_VAR: "secret"}))
    assert p.returncode == 0, p.stderr


def test_no_password_source_and_no_terminal_is_a_usage_error(master):
    p = run_tool(master, "list", password=False, env=tool_env())
    assert p.returncode == 2
    assert one_error_line(p).startswith("mupdate-client: no password")
    assert p.stdout == ""


def test_unset_password_variable_is_a_usage_error(master):
    p = run_tool(master, "list", env=tool_env())
    assert p.returncode == 2
    assert PASSWORD_VAR in one_error_line(p)


def test_unreachable_server_exits_4_with_one_line():
    port = PortAllocator()()  # nothing listens there
    p = run_tool(
        None,
        "--server",
        f"127.0.0.1:{port}",
        "--user",
        "admin",
        "--password-env",
        PASSWORD_VAR,
        "list",
        password=False,
    )
    assert p.returncode == 4
    assert one_error_line(p).startswith(
        f"mupdate-client: cannot reach a MUPDATE server at 127.0.0.1:{port}"
    )
    assert p.stdout == ""


def test_wrong_password_exits_5(master):
    p = run_tool(master, "list", env=tool_env(**{PASSWORD_VAR: "wrong"}))
    assert p.returncode == 5
    assert one_error_line(p).startswith(
        f"mupdate-client: login to {master.address} as admin refused"
    )


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["find"],
        ["watch", "--count", "x"],
        ["watch", "--count", "-1"],
        ["watch", "--seconds", "0"],
        ["watch", ""],
        ["--port", "x", "list"],
        ["list", "a", "b"],
    ],
)
def test_bad_arguments_exit_2(master, args):
    p = run_tool(master, *args)
    assert p.returncode == 2
    line = one_error_line(p)
    assert line.endswith("--help' for usage)"), line
    assert p.stdout == ""


def test_bad_server_port_is_a_usage_error():
    p = run_tool(None, "--server", "127.0.0.1:notaport", "--user", "admin", "list")
    assert p.returncode == 2
    assert one_error_line(p) == "mupdate-client: the server's port must be a number"


# ---------------------------------------------------------------- raw


def test_raw_from_piped_stdin_logs_out_at_the_end(master):
    p = subprocess.run(
        argv(master, "raw"),
        cwd=repo_root(),
        env=tool_env(**{PASSWORD_VAR: "secret"}),
        input='FIND "user.with space"\nt7 noop\nSTARTTLS\nRESERVE user.bob "be2!p"\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    # stdin is read while answers come in: each kind of line is in order, and every
    # answer comes after its command
    assert [line for line in lines if line.startswith("C: ")] == [
        'C: X0 FIND "user.with space"',
        "C: t7 NOOP",
        'C: X1 RESERVE "user.bob" "be2!p"',
        "C: X2 LOGOUT",
    ]
    assert [line for line in lines if line.startswith("S: ")] == [
        'S: X0 MAILBOX "user.with space" "be10!x" "carol\\tlr\\t"',
        'S: X0 OK "Search completed"',
        'S: t7 OK "Noop done"',
        'S: X1 OK "done"',
        'S: X2 OK "bye-bye"',
    ]
    assert len(lines) == 9
    for tag in ("X0", "t7", "X1", "X2"):
        sent = next(i for i, line in enumerate(lines) if line.startswith(f"C: {tag} "))
        assert all(i > sent for i, line in enumerate(lines) if line.startswith(f"S: {tag} "))
    assert one_error_line(p) == (
        "mupdate-client: STARTTLS changes the connection's mode; not in raw mode"
    )


def test_raw_through_a_pseudo_terminal(master):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        argv(master, "raw")[0],
        argv(master, "raw")[1:],
        cwd=str(repo_root()),
        env=tool_env(**{PASSWORD_VAR: "secret"}),
        timeout=20,
        encoding="utf-8",
    )
    try:
        child.expect_exact("type commands")
        child.sendline("LIST be2")
        child.expect_exact('C: X0 LIST "be2"')
        child.expect_exact('S: X0 RESERVE "user.bob" "be2!p"')
        child.expect_exact('S: X0 OK "list complete"')
        child.sendline("LOGOUT")
        child.expect_exact("C: X1 LOGOUT")
        child.expect_exact('S: X1 OK "bye-bye"')
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert "Traceback" not in (child.before or "")


def test_raw_asks_for_the_password_on_a_terminal(master):
    """No --password-file, --password-env or config: getpass prompts on the terminal, the
    typed password is not echoed, and the session logs in with it."""
    pexpect = pytest.importorskip("pexpect")
    command = argv(master, "raw", password=False)
    child = pexpect.spawn(
        command[0],
        command[1:],
        cwd=str(repo_root()),
        env=tool_env(),
        timeout=20,
        encoding="utf-8",
    )
    try:
        child.expect_exact(f"Password for admin at {master.address}: ")
        child.sendline(master.password)
        child.expect_exact(f"logged in to m1 at {master.address} as admin; type commands")
        assert master.password not in (child.before or "")
        child.sendline("LIST be2")
        child.expect_exact('C: X0 LIST "be2"')
        child.expect_exact('S: X0 RESERVE "user.bob" "be2!p"')
        child.expect_exact('S: X0 OK "list complete"')
        child.sendline("LOGOUT")
        child.expect_exact('S: X1 OK "bye-bye"')
        child.expect(pexpect.EOF)
        transcript = child.before or ""
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    assert master.password not in transcript
    assert "Traceback" not in transcript


def test_a_wrong_password_typed_at_the_prompt_exits_5(master):
    pexpect = pytest.importorskip("pexpect")
    command = argv(master, "list", password=False)
    child = pexpect.spawn(
        command[0],
        command[1:],
        cwd=str(repo_root()),
        env=tool_env(),
        timeout=20,
        encoding="utf-8",
    )
    try:
        child.expect_exact(f"Password for admin at {master.address}: ")
        child.sendline("not-the-password")
        child.expect(pexpect.EOF)
        output = (child.before or "").strip().splitlines()
    finally:
        child.close(force=True)
    assert child.exitstatus == 5
    assert len(output) == 1, output
    assert output[0].startswith(f"mupdate-client: login to {master.address} as admin refused")
