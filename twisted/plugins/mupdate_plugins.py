"""twistd plugins for the MUPDATE master and slave; the tap modules are imported lazily."""

from twisted.application.service import ServiceMaker

mupdate_master = ServiceMaker(
    "mupdate MUPDATE master",
    "mupdate.master.tap",
    "MUPDATE (RFC 3656) master for a Cyrus IMAP murder",
    "mupdate-master",
)
