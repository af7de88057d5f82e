"""Thin Twisted glue shared by the master and the slave: the server protocol and output."""
