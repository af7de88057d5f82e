"""The MUPDATE master: pure write rules, group commit, UPDATE streams and the twistd glue."""
