"""Authority per credential: which servers' mailboxes a logged-in credential may write
(design.md, "Authorisation"; beyond Cyrus, where every admin may write everything, §7.4).

Pure: ``check`` takes the binding table (``mupdate_authority``), the credential, the write
and the name's current entry, and returns None (allowed) or a ``Refuse`` with the NO text.
A bound credential may RESERVE, ACTIVATE, DEACTIVATE or DELETE a mailbox only when the new
location's server part and the current entry's server part are both among its servers, so
it can neither take a name another server holds, nor move one away, nor delete one; a
credential bound to no server (``readonly``) may write nothing. Unbound credentials are not
restricted. Server parts compare case-insensitively, as Cyrus compares servernames.
The check runs before ``rules.decide``: a refused write tells nothing about the entry's
state. Imports nothing from Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping

from mupdate.master.rules import Refuse, WriteCommand
from mupdate.model import MailboxEntry, server_of
from mupdate.protocol.commands import Activate, Deactivate, Reserve


def _shown(value: bytes | str) -> bytes:
    """Safe inside a quoted string: printable ASCII without quote or backslash."""
    raw = value.encode("utf-8", "replace") if isinstance(value, str) else value
    return bytes(b if 0x20 <= b < 0x7F and b not in b'"\\' else 0x3F for b in raw)


def check(
    authority: Mapping[str, frozenset[str]],
    user: str | None,
    command: WriteCommand,
    current: MailboxEntry | None,
) -> Refuse | None:
    """None when ``user`` may make this write; otherwise the refusal to answer with NO.

    ``authority`` maps a credential to its lower-cased servernames (empty: read-only);
    ``current`` is the entry ``command.name`` has now, or None.
    """
    if user is None or user not in authority:
        return None
    servers = authority[user]
    who = _shown(user)
    if not servers:
        return Refuse(who + b" may not write: read-only credential")
    touched: list[bytes] = []
    if isinstance(command, Reserve | Activate | Deactivate):
        touched.append(server_of(command.location))
    if current is not None:
        touched.append(current.server)
    for server in touched:
        if server.decode("utf-8", "replace").lower() not in servers:
            return Refuse(who + b" may not write mailboxes of " + _shown(server))
    return None
