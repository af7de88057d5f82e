"""Every fixed text the MUPDATE wire carries, named by situation (protocol doc §2.6-§5).

Exact bytes as Cyrus IMAP 3.6.1 sends them; glue never writes response text of its own.
Texts marked [ours] exist where Cyrus crashes instead of answering (§2.7, §14 case 27).
Imports nothing from Twisted.
"""

from __future__ import annotations

from typing import Final

# §2.6 literals
GO_AHEAD_LINE: Final = b"+ go ahead"

# §2.8 parser errors (all quoted)
NEED_COMMAND: Final = b"Need command"
NULL_COMMAND: Final = b"Null command"
UNRECOGNIZED_COMMAND: Final = b"Unrecognized command"
PLEASE_LOGIN_FIRST: Final = b"Please login first"
MISSING_ARGUMENTS: Final = b"Missing arguments"
EXTRA_ARGUMENTS: Final = b"Extra arguments"
BADLY_FORMED_ARGUMENTS: Final = b"Badly formed arguments"
READ_ONLY_SESSION: Final = b"read-only session"
NOT_LEGAL_WHEN_STREAMING: Final = b"not legal when streaming"

# §2.7 size limits [ours]: Cyrus exits the whole process instead
LINE_TOO_LONG: Final = b"Line too long"
LITERAL_TOO_LONG: Final = b"Literal too long"
COMMAND_TOO_LONG: Final = b"Command too long"
TOO_MANY_ARGUMENTS: Final = b"Too many arguments"

# §3.1 greeting words
CAP_AUTH: Final = b"AUTH"
CAP_STARTTLS: Final = b"STARTTLS"
CAP_COMPRESS: Final = b"COMPRESS"
CAP_PARTIAL_UPDATE: Final = b"PARTIAL-UPDATE"
DEFLATE: Final = b"DEFLATE"
BANNER_WORD: Final = b"MUPDATE"
ROLE_MASTER: Final = b"(master)"
ROLE_SLAVE_PREFIX: Final = b"mupdate://"

IMPLEMENTATION: Final = b"mupdate"  # [ours] the banner's implementation field (§3.1)

# §3.4 refused connection (sent with a trailing NUL), §4 idle timeout
SERVER_UNABLE: Final = b"Server Unable"
IDLE_TOO_LONG: Final = b"idle for too long"
TOO_MANY_FAILURES: Final = b"Too many login failures"  # [ours] mupdate_auth_attempts_max

# §5.1 AUTHENTICATE
AUTHENTICATED: Final = b"Authenticated"
ALREADY_AUTHENTICATED: Final = b"already authenticated"
CLIENT_CANCELED: Final = b"Client canceled authentication"  # unquoted
ERROR_READING_RESPONSE: Final = b"Error reading client response: "  # unquoted, + reason
SASL_LINE_TOO_LONG: Final = ERROR_READING_RESPONSE + b"line too long"  # [ours], unquoted
UNDEFINED_ERROR: Final = b"undefined error!"
SASL_ERROR: Final = b"SASL Error"
# [ours] SASL failure texts (quoted). Cyrus says "undefined error!" for all of them; its
# clients read only the "<tag> NO" prefix, so a clearer text is safe. AUTH_FAILED covers
# wrong password, unknown user and non-admin alike, so it reveals nothing about accounts.
AUTH_FAILED: Final = b"authentication failed"
AUTH_BAD_BASE64: Final = b"invalid base64 data"
AUTH_MECHANISM_UNAVAILABLE: Final = b"mechanism not available"

# §5.2 STARTTLS (all unquoted)
BEGIN_TLS: Final = b"Begin TLS negotiation now"
STARTTLS_AFTER_AUTH: Final = b"Can't Starttls after authentication"
STARTTLS_AFTER_COMPRESS: Final = b"Can't Starttls after Compress"
ALREADY_TLS: Final = b"Already did a successful Starttls"
TLS_INIT_ERROR: Final = b"Error initializing TLS"
STARTTLS_FAILED: Final = b"Starttls negotiation failed"

# §5.3 COMPRESS (all unquoted)
DEFLATE_ACTIVE: Final = b"DEFLATE active via COMPRESS"
UNKNOWN_COMPRESS: Final = b"Unknown COMPRESS algorithm: "  # + algorithm as sent
COMPRESS_ACTIVE_SUFFIX: Final = b" active"  # algorithm as sent + this
COMPRESS_UNAVAILABLE: Final = b"COMPRESS not available"  # [ours] quoted NO while unsupported

# §5.4-§5.12 command completions
BYE_BYE: Final = b"bye-bye"
NOOP_DONE: Final = b"Noop done"
SEARCH_COMPLETED: Final = b"Search completed"
LIST_COMPLETE: Final = b"list complete"
STREAMING_STARTS: Final = b"streaming starts"
DONE: Final = b"done"
MAILBOX_EXISTS: Final = b"mailbox already exists"
NOT_CURRENTLY_ACTIVE: Final = b"mailbox not currently active"
DOES_NOT_EXIST: Final = b"mailbox doesn't exist"

# [ours] design.md: failures of our own side
INTERNAL_ERROR: Final = b"Internal server error"  # style.md §7: glue code failed
STORAGE_FAILURE: Final = b"storage failure"  # a write could not be committed: NO
OUTPUT_OVERFLOW: Final = b"output buffer full: reader too slow"  # a stream's BYE
