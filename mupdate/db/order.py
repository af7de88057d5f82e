"""Cyrus 3.6 ``mailboxes.db`` key order, the order of every LIST and UPDATE dump (§7.8).

``ctl_mboxlist -m`` walks our LIST reply beside its own database and aborts when the two
orders differ, so this order is load-bearing. Pure functions; imports nothing from Twisted.
"""

from __future__ import annotations

from typing import Final

DOMAIN_SEP: Final = b"\x1d"
"""What the first ``!`` (end of the domain) becomes in a key."""

HIER_SEP: Final = b"\x1f"
"""What each ``.`` (hierarchy separator) of the name after the domain becomes."""

# One pass does both replacements of §7.8 at once: "." -> 0x1F, then "^" -> ".". Doing them
# together is the same as doing them in that order, because the first leaves no "." behind.
_REST_TABLE: Final = bytes.maketrans(b".^", HIER_SEP + b".")


def mailbox_key(name: bytes) -> bytes:
    """The Cyrus 3.6 dbname of an internal mailbox name; compare keys as plain bytes.

    The domain (text before the first ``!``) is kept as it is and followed by 0x1D; in the
    rest, ``.`` becomes 0x1F and ``^`` becomes ``.``. Distinct names can share a key when they
    hold 0x1D or 0x1F bytes themselves (Cyrus would store them in one record); ``sort_key``
    breaks those ties.
    """
    domain, bang, rest = name.partition(b"!")
    if not bang:
        return name.translate(_REST_TABLE)
    return domain + DOMAIN_SEP + rest.translate(_REST_TABLE)


def sort_key(name: bytes) -> tuple[bytes, bytes]:
    """A total order on names: Cyrus key order, ties broken by the raw name.

    Equal to ``mailbox_key`` order for every name Cyrus can tell apart, and injective, so
    indexes can keep names sorted by it without two names ever comparing equal.
    """
    return (mailbox_key(name), name)
