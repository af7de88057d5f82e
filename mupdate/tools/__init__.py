"""Command-line tools: mupdate-passwd (and later mupdate-client, mupdate-push)."""
