"""Interop: which SASL mechanism real Cyrus 3.6 clients pick from our master's list, and that
they log in with it (mupdate-protocol.md §5.1; interop README "Greeting and SASL").

Topology (one per module, see conftest.py for which master):

    be1 (Cyrus imapd, default client settings) --tap-sasl--> master under test

Our master offers, by default, SCRAM-SHA-512 SCRAM-SHA-256 SCRAM-SHA-1 PLAIN LOGIN (no -PLUS
without TLS). Every Cyrus client hands the list to libsasl, which takes the strongest it can
use: SCRAM-SHA-512 (libsasl2 2.1.28 on Debian 12). The exchange is §5.1's: the initial
response in a {n+} literal, bare base64 lines, the server's final v=... as one more
challenge answered by an empty line, then the tagged OK.
"""

from __future__ import annotations

import base64

import pytest

from tests.helpers.cyrus import CyrusMasterUnderTest, CyrusMurder, Node, Tap, wait_until
from tests.helpers.ourmaster import OurMaster
from tests.helpers.rawmupdate import Entry, MupdateClient

pytestmark = pytest.mark.interop

Master = OurMaster | CyrusMasterUnderTest


@pytest.fixture(autouse=True)
def _ours_only(master_under_test: Master) -> None:
    if isinstance(master_under_test, CyrusMasterUnderTest):
        pytest.skip("the Cyrus master under test offers PLAIN LOGIN only; this is our list")


@pytest.fixture(scope="module")
def backend(murder: CyrusMurder, master_under_test: Master) -> tuple[Node, Tap]:
    tap = murder.tap("tap-sasl", to=master_under_test.address)
    be1 = murder.backend("be1", servername="be1", mupdate=tap.addr)
    return be1, tap


def auth_exchange(tap: Tap, since: int) -> list[tuple[str, str]]:
    """The first new connection's lines from AUTHENTICATE up to its tagged reply."""
    conns = tap.wait_closed(since, 1)
    lines = [(x.direction, x.text) for x in conns[min(conns)] if x.direction in ("C>", "<S")]
    start = next(i for i, (d, t) in enumerate(lines) if t.startswith("A01 AUTHENTICATE"))
    end = next(i for i, (d, t) in enumerate(lines) if d == "<S" and t.startswith("A01 "))
    return lines[start : end + 1]


def test_default_cyrus_backend_logs_in_with_scram_sha_512_and_create_reaches_list(
    murder: CyrusMurder,
    master_under_test: Master,
    backend: tuple[Node, Tap],
    mupdate_session,
) -> None:
    be1, tap = backend
    mark = tap.mark()
    murder.imap(be1, ["create", "user.sasl"])
    exchange = auth_exchange(tap, mark)
    assert exchange[0][0] == "C>"
    assert exchange[0][1].startswith('A01 AUTHENTICATE "SCRAM-SHA-512" {'), exchange
    # §5.1: client-first, server-first, client-final, v=..., empty line, OK.
    assert [d for d, _ in exchange] == ["C>", "C>", "<S", "C>", "<S", "C>", "<S"], exchange
    client_first = base64.b64decode(exchange[1][1])
    assert client_first.startswith(b"n,a=admin,n=admin,r="), client_first
    assert base64.b64decode(exchange[2][1]).startswith(b"r=")
    assert base64.b64decode(exchange[3][1]).startswith(b"c=bixhPWFkbWluLA==,r=")  # n,a=admin,
    assert base64.b64decode(exchange[4][1]).startswith(b"v=")
    assert exchange[5] == ("C>", "")
    assert exchange[6] == ("<S", 'A01 OK "Authenticated"')
    session = mupdate_session()
    entry = wait_until(lambda: session.find("user.sasl"), 10, "user.sasl in the master")
    assert entry == Entry(b"MAILBOX", b"user.sasl", b"be1!default", entry.acl)  # type: ignore[union-attr]


@pytest.mark.parametrize("mech", ["SCRAM-SHA-256", "SCRAM-SHA-1", "SCRAM-SHA-512"])
def test_cyrus_mupdatetest_logs_in_with_scram(
    murder: CyrusMurder, master_under_test: Master, mech: str
) -> None:
    p = murder.mupdatetest(master_under_test.address, "NOOP", cyrus=True, mech=mech)
    out = p.stdout
    assert p.returncode == 0, out
    assert f'C: A01 AUTHENTICATE "{mech}"' in out, out
    assert "\nAuthenticated.\n" in out, out


def test_master_greeting_offers_scram_strongest_first(master_under_test: Master) -> None:
    with MupdateClient.connect(master_under_test.host, master_under_test.port) as c:
        assert c.mechanisms == [
            b"SCRAM-SHA-512",
            b"SCRAM-SHA-256",
            b"SCRAM-SHA-1",
            b"PLAIN",
            b"LOGIN",
        ]
