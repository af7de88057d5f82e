"""Cyrus's own ``mailboxes.db``, written through Cyrus's ``cyr_dbtool`` (design.md "Slave").

``dlist``, ``records`` and ``batch`` are pure (the value format, the record format of §9.7,
the ``cyr_dbtool ... batch`` wire); ``dbtool`` runs the long-lived child under Twisted and
``store`` puts a ``MailboxStore`` in front of it for the slave.
"""
