"""Mailbox storage: the store interface, the SQLite store, the read index, key order (§7.8).

Imports nothing from Twisted; stores are synchronous and the glue picks their thread.
"""

from mupdate.db.export import export_entries, import_entries
from mupdate.db.index import MailboxIndex
from mupdate.db.order import mailbox_key, sort_key
from mupdate.db.sqlite import SqliteStore
from mupdate.db.store import (
    Change,
    ExpireTombstones,
    MailboxStore,
    PutEntry,
    RemoveEntry,
    StoreError,
)

__all__ = [
    "Change",
    "ExpireTombstones",
    "MailboxIndex",
    "MailboxStore",
    "PutEntry",
    "RemoveEntry",
    "SqliteStore",
    "StoreError",
    "export_entries",
    "import_entries",
    "mailbox_key",
    "sort_key",
]
