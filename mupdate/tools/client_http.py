"""``mupdate-client status --status-url URL``: our master's or slave's ``/status`` over HTTP.

Without ``--status-url`` the status subcommand learns what any MUPDATE server tells a
client (the greeting, LIST, a NOOP); our own processes say more on their HTTP listener
(``mupdate_metrics_listen``, ``mupdate.net.status_http``): uptime, store size, sync state,
lag, brake, guard and heal counts. No MUPDATE login is needed for it, so no password.

``URL`` is ``http://HOST:PORT[/status]`` or just ``HOST:PORT``. Output is the JSON object
as ``key: value`` lines (nested keys joined with dots), or the object on one line with
``--json``. Exit codes are the tool's: 0 done, 4 no answer or not a status document.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twisted.internet.defer import Deferred
from twisted.web.client import Agent, readBody

from mupdate.tools.connect import EXIT_CONNECTION, EXIT_USAGE, ToolError


def status_url(text: str) -> str:
    """The full URL of ``/status`` from what the operator typed."""
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ToolError(f"--status-url wants http://HOST:PORT[/status], got {text!r}", EXIT_USAGE)
    path = parts.path if parts.path not in ("", "/") else "/status"
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


async def fetch_status(reactor: Any, url: str, timeout: float) -> dict[str, object]:
    agent = Agent(reactor, connectTimeout=timeout)
    try:
        response = await agent.request(b"GET", url.encode("ascii")).addTimeout(timeout, reactor)
        body: bytes = await Deferred.fromCoroutine(_read(response)).addTimeout(timeout, reactor)
    except ToolError:
        raise
    except Exception as exc:  # refused, timed out, reset: one line for the operator
        raise ToolError(f"no status from {url}: {exc}", EXIT_CONNECTION) from None
    if response.code != 200:
        raise ToolError(f"{url} answered HTTP {response.code}", EXIT_CONNECTION)
    try:
        record = json.loads(body)
    except ValueError:
        raise ToolError(f"{url} did not answer JSON", EXIT_CONNECTION) from None
    if not isinstance(record, dict):
        raise ToolError(f"{url} did not answer a JSON object", EXIT_CONNECTION)
    return record


async def _read(response: Any) -> bytes:
    data: bytes = await readBody(response)
    return data


def flatten(record: dict[str, object], prefix: str = "") -> list[tuple[str, str]]:
    """``("sync.state", "synced")`` pairs, in the document's order; null shows as ``-``."""
    pairs: list[tuple[str, str]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            pairs += flatten(value, name + ".")
        elif value is None:
            pairs.append((name, "-"))
        elif isinstance(value, bool):
            pairs.append((name, "yes" if value else "no"))
        else:
            pairs.append((name, str(value)))
    return pairs


def status_text(record: dict[str, object]) -> list[str]:
    pairs = flatten(record)
    if not pairs:
        return []
    width = max(len(key) for key, _ in pairs) + 1
    return [f"{key + ':':<{width}} {value}" for key, value in pairs]


def status_json(record: dict[str, object]) -> str:
    return json.dumps({"kind": "status", **record}, ensure_ascii=False)
