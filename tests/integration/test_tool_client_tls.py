"""``mupdate-client`` connection options against our real master (twistd subprocess) with a
test certificate (tests/helpers/certs.py): an imapd.conf-style ``--config`` with Cyrus's
option names, STARTTLS verified against ``--ca-file``, a SCRAM login, flags over the file,
and the refusals (a CA that did not sign the server's certificate, a server that will not
talk without TLS) as one line with the documented exit code (issue 5).

The master offers only SCRAM-SHA-256 and requires TLS before any login
(``mupdate_tls_required: yes``), so a listing that comes back proves both.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.certs import Pki, session_pki  # noqa: F401 - fixture
from tests.helpers.cyrus import PortAllocator, repo_root
from tests.helpers.ourmaster import OurMaster, our_master_available
from tests.helpers.toolclient import (
    PASSWORD_VAR,
    argv,
    columns,
    one_error_line,
    run_tool,
    tool_env,
)

_WHY_NOT = our_master_available()
pytestmark = pytest.mark.skipif(_WHY_NOT is not None, reason=str(_WHY_NOT))


@pytest.fixture(scope="module")
def implicit_port() -> int:
    """The master's second listener, TLS from the first byte (``mupdate_tls_listen``)."""
    return PortAllocator()()


@pytest.fixture(scope="module")
def tls_master(
    tmp_path_factory: pytest.TempPathFactory,
    implicit_port: int,
    session_pki: Pki,  # noqa: F811 - the imported fixture
) -> Iterator[OurMaster]:
    m = OurMaster(
        tmp_path_factory.mktemp("tls-tool-master"),
        servername="tls.test",
        extra_config={
            "mupdate_tls_listen": f"tcp:{implicit_port}:interface=127.0.0.1",
            "tls_server_cert": str(session_pki.server.cert),
            "tls_server_key": str(session_pki.server.key),
            "mupdate_tls_required": "yes",
            "sasl_mech_list": "SCRAM-SHA-256",
        },
    )
    m.start()
    try:
        # entries written through the tool itself: the master takes no login in clear
        p = run_raw(
            m,
            session_pki.ca,
            'ACTIVATE user.alice be1!default "alice\\tlrswipkxtecdan\\t"\nRESERVE user.bob be2!p\n',
        )
        assert p.returncode == 0, p.stderr
        assert p.stdout.count(' OK "done"') == 2, p.stdout
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="module")
def plain_master(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OurMaster]:
    """A master with no certificate: it cannot offer STARTTLS."""
    m = OurMaster(tmp_path_factory.mktemp("plain-tool-master"), servername="plain.test")
    m.start()
    try:
        yield m
    finally:
        m.stop()


def tls_flags(ca: Path) -> list[str]:
    return ["--starttls", "--ca-file", str(ca)]


def run_raw(node: OurMaster, ca: Path, script: str) -> subprocess.CompletedProcess[str]:
    """``raw`` over STARTTLS with ``script`` on stdin (also how the fixture writes)."""
    p = subprocess.run(
        argv(node, *tls_flags(ca), "raw"),
        cwd=repo_root(),
        env=tool_env(**{PASSWORD_VAR: node.password}),
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in p.stderr, p.stderr
    return p


def write_config(path: Path, **values: str) -> Path:
    # unrelated Cyrus keys are in the same file on a real backend and must be skipped
    lines = ["configdirectory: /var/lib/cyrus", "partition-default: /var/spool/cyrus/mail"]
    lines += [f"{key}: {value}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config_only(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The tool with nothing but --config: no --server, --user or password flag."""
    return run_tool(None, "--config", str(config), *args, password=False, env=tool_env())


# ---------------------------------------------------------------- --config


def test_config_file_with_cyrus_option_names_starttls_and_scram(tls_master, session_pki, tmp_path):  # noqa: F811
    secret = tmp_path / "pw"
    secret.write_text(tls_master.password + "\n", encoding="utf-8")
    config = write_config(
        tmp_path / "imapd.conf",
        mupdate_server=tls_master.address,
        mupdate_authname="admin",
        mupdate_password_file=str(secret),
        tls_server_ca_file=str(session_pki.ca),
        mupdate_starttls="required",
    )
    p = config_only(config, "--json", "list")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert [json.loads(line) for line in p.stdout.splitlines()] == [
        {
            "kind": "mailbox",
            "name": "user.alice",
            "location": "be1!default",
            "acl": "alice\tlrswipkxtecdan\t",
        },
        {"kind": "reserve", "name": "user.bob", "location": "be2!p", "acl": None},
    ]
    status = config_only(config, "--json", "status")
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    # the banner seen under TLS: no STARTTLS any more, and SCRAM-SHA-256 the only mechanism
    assert record["capabilities"] == [
        {"name": "AUTH", "args": ["SCRAM-SHA-256"]},
        {"name": "PARTIAL-UPDATE", "args": []},
    ]
    assert record["mechanisms"] == ["SCRAM-SHA-256"]
    assert (record["server"], record["servername"]) == (tls_master.address, "tls.test")


def test_config_password_and_port_keys(tls_master, session_pki, tmp_path):  # noqa: F811
    config = write_config(
        tmp_path / "imapd.conf",
        mupdate_server=tls_master.host,
        mupdate_port=str(tls_master.port),
        mupdate_authname="admin",
        mupdate_password=tls_master.password,
        tls_server_ca_file=str(session_pki.ca),
    )
    p = config_only(config, "find", "user.bob")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert columns(p.stdout.splitlines()) == [("user.bob", "RESERVE", "be2!p", "-")]


def test_flags_win_over_the_config_file(tls_master, session_pki, tmp_path):  # noqa: F811
    dead = PortAllocator()()
    config = write_config(
        tmp_path / "imapd.conf",
        mupdate_server=f"127.0.0.1:{dead}",
        mupdate_authname="nobody",
        mupdate_password="wrong",
        tls_server_ca_file=str(session_pki.other_ca),
    )
    p = run_tool(
        tls_master,
        "--config",
        str(config),
        "--ca-file",
        str(session_pki.ca),
        "find",
        "user.alice",
    )
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert columns(p.stdout.splitlines()) == [
        ("user.alice", "MAILBOX", "be1!default", "alice lrswipkxtecdan")
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mupdate_starttls: sometimes\n", ":2: mupdate_starttls"),
        ("mupdate_server 127.0.0.1\n", ":2: expected 'key: value', got 'mupdate_server 127.0.0.1'"),
    ],
)
def test_a_bad_config_file_is_a_usage_error_naming_file_and_line(tmp_path, text, message):
    config = tmp_path / "bad.conf"
    config.write_text("mupdate_authname: admin\n" + text, encoding="utf-8")
    p = config_only(config, "list")
    assert p.returncode == 2
    line = one_error_line(p)
    assert line.startswith(f"mupdate-client: cannot use --config {config}{message}"), line


def test_a_missing_config_file_is_a_usage_error(tmp_path):
    config = tmp_path / "nothing.conf"
    p = config_only(config, "list")
    assert p.returncode == 2
    assert one_error_line(p) == (
        f"mupdate-client: cannot use --config {config}: No such file or directory"
    )


# ---------------------------------------------------------------- TLS flags


def test_starttls_with_ca_file_and_scram_find(tls_master, session_pki):  # noqa: F811
    p = run_tool(tls_master, *tls_flags(session_pki.ca), "find", "user.alice", "user.bob")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert columns(p.stdout.splitlines()) == [
        ("user.alice", "MAILBOX", "be1!default", "alice lrswipkxtecdan"),
        ("user.bob", "RESERVE", "be2!p", "-"),
    ]


def test_implicit_tls_watch(tls_master, implicit_port, session_pki):  # noqa: F811
    p = run_tool(
        None,
        "--server",
        f"127.0.0.1:{implicit_port}",
        "--user",
        "admin",
        "--password-env",
        PASSWORD_VAR,
        "--tls",
        "--ca-file",
        str(session_pki.ca),
        "watch",
        "--json",
        "--seconds",
        "0.5",
        password=False,
    )
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert [json.loads(line)["name"] for line in p.stdout.splitlines()] == [
        "user.alice",
        "user.bob",
    ]


def test_a_ca_that_did_not_sign_the_certificate_is_refused_with_exit_4(tls_master, session_pki):  # noqa: F811
    p = run_tool(tls_master, *tls_flags(session_pki.other_ca), "list")
    assert p.returncode == 4
    assert p.stdout == ""
    line = one_error_line(p)
    assert line.startswith(f"mupdate-client: TLS with {tls_master.address} failed: "), line
    assert "certificate verify failed" in line
    assert line.endswith(
        f"(checked against {session_pki.other_ca}; --ca-file or tls_server_ca_file names the CA)"
    )


def test_the_system_ca_store_does_not_know_the_test_ca(tls_master):
    p = run_tool(tls_master, "--starttls", "status")
    assert p.returncode == 4
    assert "checked against the system's CA store" in one_error_line(p)


def test_no_tls_to_a_master_that_requires_it_is_a_refused_login(tls_master):
    p = run_tool(tls_master, "--no-tls", "list")
    assert p.returncode == 5
    assert one_error_line(p) == (
        f"mupdate-client: login to {tls_master.address} as admin refused: "
        "no usable mechanism (offered: none)"
    )


def test_starttls_required_but_not_offered_exits_4(plain_master, session_pki):  # noqa: F811
    p = run_tool(plain_master, *tls_flags(session_pki.ca), "list")
    assert p.returncode == 4
    line = one_error_line(p)
    assert line.startswith(f"mupdate-client: {plain_master.address}: "), line
    assert "does not offer STARTTLS" in line
    assert p.stdout == ""


def test_raw_over_starttls_ends_after_logout(tls_master, session_pki):  # noqa: F811
    """Our master closes a TLS session only once the client has closed too (close_notify);
    raw closes its side after LOGOUT's reply, so the session ends at once, exit 0."""
    p = run_raw(tls_master, session_pki.ca, "LIST be2\n")
    assert (p.returncode, p.stderr) == (0, ""), p.stderr
    assert sorted(p.stdout.splitlines()) == sorted(
        [
            'C: X0 LIST "be2"',
            "C: X1 LOGOUT",
            'S: X0 RESERVE "user.bob" "be2!p"',
            'S: X0 OK "list complete"',
            'S: X1 OK "bye-bye"',
        ]
    )
