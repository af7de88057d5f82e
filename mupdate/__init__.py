"""MUPDATE master and slave for Cyrus IMAP murders."""

__version__ = "0.1.0"
