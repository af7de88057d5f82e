"""The optional HTTP listener: ``/metrics``, ``/status`` and ``/health`` (issue 8).

``mupdate_metrics_listen`` names its endpoints (default none: no HTTP at all). It serves

* ``/metrics``: the process's registry in Prometheus text format;
* ``/status``: a JSON object (``mupdate.status``): role, version, uptime, store, entries,
  connections, streams, and a slave's master, sync state, lag, brake and guard counts;
* ``/health``: ``200 ok`` while the process can serve, else ``503`` and the reason, for a
  load balancer or a systemd ``ExecStartPost``/watchdog script.

Read-only and unauthenticated, like any Prometheus exporter: listen on loopback or a
management network. Only GET and HEAD are answered; requests are not logged one by one (a
scrape every few seconds would bury the log).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site


class StatusSource(Protocol):
    def status(self) -> dict[str, object]: ...

    def health(self) -> tuple[bool, str]: ...


class _Leaf(Resource):
    isLeaf = True

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)

    def render_GET(self, request: Request) -> bytes:
        raise NotImplementedError


class MetricsPage(_Leaf):
    def __init__(self, exposition: Callable[[], bytes]) -> None:
        super().__init__()
        self._exposition = exposition

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return self._exposition()


class StatusPage(_Leaf):
    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(self._source.status(), indent=2).encode() + b"\n"


class HealthPage(_Leaf):
    def __init__(self, source: StatusSource) -> None:
        super().__init__()
        self._source = source

    def render_GET(self, request: Request) -> bytes:
        healthy, reason = self._source.health()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        if not healthy:
            request.setResponseCode(503)
            return f"unavailable: {reason}\n".encode()
        return f"{reason}\n".encode()


class QuietSite(Site):
    """No access-log line per request, no tracebacks to the client."""

    displayTracebacks = False
    noisy = False  # no "Starting factory" lines

    def log(self, request: http.Request) -> None:
        return None


def status_site(exposition: Callable[[], bytes], source: StatusSource) -> Site:
    root = Resource()
    root.putChild(b"metrics", MetricsPage(exposition))
    root.putChild(b"status", StatusPage(source))
    root.putChild(b"health", HealthPage(source))
    return QuietSite(root)
