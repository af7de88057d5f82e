"""``mupdate-client`` against our real slave (twistd subprocess following our master):
``find``, ``watch`` and ``raw`` as an operator runs them on a frontend, checked field by field
(issue 5). ``list`` and ``status`` against the slave are in test_tool_client.py.

The slave follows a master of this module's own, so the watch test's writes disturb no
other module. Every wait is bounded (select with a deadline, process timeouts).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.helpers.cyrus import repo_root, wait_until
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.ourslave import OurSlave, our_slave_available
from tests.helpers.toolclient import (
    PASSWORD_VAR,
    argv,
    columns,
    finish,
    listing,
    one_error_line,
    run_tool,
    start_watch,
    tool_env,
    write,
)

ACL = "alice\tlrswipkxtecdan\t"
DATA: list[tuple[bytes, ...]] = [
    (b"ACTIVATE", b"user.alice", b"be1!default", ACL.encode()),
    (b"ACTIVATE", b"user.alice.Sent", b"be1!default", ACL.encode()),
    (b"RESERVE", b"user.bob", b"be2!p"),
]

_WHY_NOT = our_master_available() or our_slave_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurMaster]:
    m = OurMaster(tmp_path_factory.mktemp("slave-tools-master"), servername="m3")
    m.start()
    try:
        write(m, *DATA)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def slave(master: OurMaster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurSlave]:
    s = OurSlave(
        tmp_path_factory.mktemp("slave-tools-slave"),
        master_address=master.address,
        servername="fe2",
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


def in_step(master: OurMaster, slave: OurSlave) -> None:
    expected = listing(master)
    wait_until(lambda: listing(slave) == expected, 30, "the slave to catch up")


# ---------------------------------------------------------------- find


def test_find_on_the_slave_answers_from_its_copy(slave):
    p = run_tool(slave, "find", "user.alice.Sent", "user.bob", "user.nobody")
    assert p.returncode == 1
    assert columns(p.stdout.splitlines()) == [
        ("user.alice.Sent", "MAILBOX", "be1!default", "alice lrswipkxtecdan"),
        ("user.bob", "RESERVE", "be2!p", "-"),
        ("user.nobody", "MISSING", "-", "-"),
    ]
    assert one_error_line(p) == "mupdate-client: 1 of 3 name(s) not found"


def test_find_json_on_the_slave(slave):
    p = run_tool(slave, "--json", "find", "user.alice", "user.bob")
    assert (p.returncode, p.stderr) == (0, "")
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        {"kind": "mailbox", "name": "user.alice", "location": "be1!default", "acl": ACL},
        {"kind": "reserve", "name": "user.bob", "location": "be2!p", "acl": None},
    ]


# ---------------------------------------------------------------- watch


def test_watch_on_the_slave_sees_a_change_made_on_the_master(master, slave):
    in_step(master, slave)
    proc, reader = start_watch(slave, "--json", "--count", "2")
    try:
        dump = [json.loads(reader.line()) for _ in DATA]
        assert [(r["name"], r["kind"], r["change"]) for r in dump] == [
            ("user.alice", "mailbox", None),
            ("user.alice.Sent", "mailbox", None),
            ("user.bob", "reserve", None),
        ]
        write(
            master,
            (b"ACTIVATE", b"user.carol", b"be1!default", b"carol\tlrswipkxtecdan\t"),
            (b"DELETE", b"user.bob"),
        )
        changes = [json.loads(reader.line()) for _ in range(2)]
    finally:
        code, rest, err = finish(proc)
        write(master, (b"DELETE", b"user.carol"), (b"RESERVE", b"user.bob", b"be2!p"))
    assert changes == [
        {
            "kind": "mailbox",
            "name": "user.carol",
            "location": "be1!default",
            "acl": "carol\tlrswipkxtecdan\t",
            "change": "mailbox",
        },
        {"kind": "delete", "name": "user.bob", "location": None, "acl": None, "change": "delete"},
    ]
    assert (code, rest, err) == (0, "", "")


def test_watch_text_on_the_slave_with_a_host_sees_only_that_hosts_changes(master, slave):
    in_step(master, slave)
    proc, reader = start_watch(slave, "--changes-only", "--count", "1", "be2")
    try:
        assert reader.line().split() == ["NAME", "STATE", "LOCATION", "ACL"]
        write(
            master,
            (b"ACTIVATE", b"user.elsewhere", b"be1!default", b"e\tlr\t"),
            (b"RESERVE", b"user.here", b"be2!q"),
        )
        change = reader.line()
    finally:
        code, rest, err = finish(proc)
        write(master, (b"DELETE", b"user.elsewhere"), (b"DELETE", b"user.here"))
    assert change.split() == ["user.here", "RESERVE", "be2!q", "-"]
    assert (code, rest, err) == (0, "", "")


# ---------------------------------------------------------------- raw


def test_raw_on_the_slave_reads_and_is_refused_writes(master, slave):
    in_step(master, slave)
    p = subprocess.run(
        argv(slave, "raw"),
        cwd=repo_root(),
        env=tool_env(**{PASSWORD_VAR: "secret"}),
        input='FIND user.alice\nRESERVE "user.new" "be1!p"\nLIST be2\n',
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    lines = p.stdout.splitlines()
    assert [line for line in lines if line.startswith("C: ")] == [
        'C: X0 FIND "user.alice"',
        'C: X1 RESERVE "user.new" "be1!p"',
        'C: X2 LIST "be2"',
        "C: X3 LOGOUT",
    ]
    assert [line for line in lines if line.startswith("S: ")] == [
        'S: X0 MAILBOX "user.alice" "be1!default" "alice\\tlrswipkxtecdan\\t"',
        'S: X0 OK "Search completed"',
        'S: X1 BAD "read-only session"',  # a slave takes no writes (§5.9)
        'S: X2 RESERVE "user.bob" "be2!p"',
        'S: X2 OK "list complete"',
        'S: X3 OK "bye-bye"',
    ]
    assert len(lines) == 10
    assert listing(master) == listing(slave)  # the refused RESERVE went nowhere
    assert b"user.new" not in [e.name for e in listing(master)]
