"""twistd plugins for the MUPDATE master and slave; the tap modules are imported lazily."""

from twisted.application.service import ServiceMaker

mupdate_master = ServiceMaker(
    "mupdate MUPDATE master",
    "mupdate.master.tap",
    "MUPDATE (RFC 3656) master for a Cyrus IMAP murder",
    "mupdate-master",
)

mupdate_slave = ServiceMaker(
    "mupdate MUPDATE slave",
    "mupdate.slave.tap",
    "MUPDATE (RFC 3656) slave: a local copy of the murder's mailbox list, guarded",
    "mupdate-slave",
)
