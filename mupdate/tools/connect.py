"""How the operator tools reach a MUPDATE server: options, password sources, login.

The same settings as the slave's link to its master, from flags, an imapd.conf-style file
(``--config``: ``mupdate_server``, ``mupdate_port``, ``mupdate_authname``,
``mupdate_username``, ``mupdate_password`` / ``mupdate_password_file``), or both (flags
win). The password never has to be on the command line: ``--password-file``,
``--password-env VAR``, the config file, or a prompt on a terminal.

TLS as the slave does it (``mupdate.net.login``): STARTTLS when offered (``--starttls`` or
``mupdate_starttls: required`` makes it mandatory), ``--tls`` or ``mupdate_server HOST:PORT/tls``
for implicit TLS, the server certificate verified against ``--ca-file``/``tls_server_ca_file``
(else the system store) and the host name unless ``--no-verify``/``mupdate_tls_verify: no``;
``--cert``/``--key`` present a client certificate (EXTERNAL when the server offers it).
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from twisted.internet.endpoints import HostnameEndpoint, connectProtocol, wrapClientTLS

from mupdate.config import ConfigFileError, parse_imapd_conf
from mupdate.config.settings import DEFAULT_PORT, last_values
from mupdate.config.tls_settings import ClientTls, TlsSettingsError, client_tls
from mupdate.net.client import MupdateClientProtocol, ServerInfo

#: Exit codes every tool shares (README "Operator tools").
EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_CONNECTION = 4
EXIT_AUTH = 5


class ToolParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other error (exit 2); subcommand parsers made
    through ``add_subparsers`` are of this class too."""

    def error(self, message: str) -> NoReturn:
        tool = self.prog.split()[0]
        self.exit(EXIT_USAGE, f"{tool}: {message} (see '{self.prog} --help' for usage)\n")


class ToolError(Exception):
    """One clear line for the operator, and the exit code that goes with it."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    authname: str
    password: str
    authzid: str = ""
    timeout: float = 15.0
    tls: ClientTls = field(default_factory=ClientTls)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (flags win over --config)")
    group.add_argument(
        "--config", help="imapd.conf-style file with mupdate_server, mupdate_authname, ..."
    )
    group.add_argument(
        "--server", "-s", help="HOST or HOST:PORT (default: mupdate_server, else 127.0.0.1)"
    )
    group.add_argument(
        "--port", "-p", type=int, help=f"port when --server has none (default {DEFAULT_PORT})"
    )
    group.add_argument("--user", "-u", help="authentication id (mupdate_authname)")
    group.add_argument("--authz", help="authorization id (mupdate_username)")
    group.add_argument("--password-file", help="read the password from the first line of this file")
    group.add_argument(
        "--password-env", metavar="VAR", help="read the password from this environment variable"
    )
    group.add_argument(
        "--timeout", type=float, default=15.0, help="seconds for connect and login (default 15)"
    )
    tls = parser.add_argument_group("TLS (default: STARTTLS when offered, certificate verified)")
    tls.add_argument(
        "--starttls",
        action="store_true",
        help="require STARTTLS: refuse to log in if the server does not offer it",
    )
    tls.add_argument("--tls", action="store_true", help="implicit TLS from the first byte")
    tls.add_argument("--no-tls", action="store_true", help="never STARTTLS (mupdate_starttls: off)")
    tls.add_argument("--ca-file", help="CA file for the server certificate (tls_server_ca_file)")
    tls.add_argument(
        "--no-verify",
        action="store_true",
        help="do not verify the server certificate or host name (mupdate_tls_verify: no)",
    )
    tls.add_argument("--cert", help="client certificate (tls_client_cert)")
    tls.add_argument("--key", help="client certificate's key (tls_client_key)")
    tls.add_argument(
        "--allow-plaintext",
        action="store_true",
        help="allow PLAIN/LOGIN without TLS to a remote server (allowplaintext: yes)",
    )


def split_server(text: str, default_port: int) -> tuple[str, int]:
    text = text.split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host, int(port)
    return text, default_port


def _first_line(path: str) -> str:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ToolError(
            f"cannot read the password file {path}: {exc.strerror}", EXIT_USAGE
        ) from None
    if not lines or not lines[0]:
        raise ToolError(f"the password file {path} is empty", EXIT_USAGE)
    return lines[0]


def resolve_target(args: argparse.Namespace, *, prompt: bool = True) -> Target:
    values: dict[str, str] = {}
    tls = ClientTls()
    if args.config:
        try:
            text = Path(args.config).read_text(encoding="utf-8")
            records = last_values(parse_imapd_conf(text, args.config))
            values = {k: r.value for k, r in records.items()}
            tls = client_tls(records)
        except OSError as exc:
            raise ToolError(
                f"cannot use --config {args.config}: {exc.strerror}", EXIT_USAGE
            ) from None
        except (ConfigFileError, ValueError) as exc:  # these name the file and line already
            where = str(exc) if str(exc).startswith(args.config) else f"{args.config}: {exc}"
            raise ToolError(f"cannot use --config {where}", EXIT_USAGE) from None
    tls = _tls_flags(args, tls)
    try:
        default_port = args.port or int(values.get("mupdate_port", DEFAULT_PORT))
        host, port = split_server(
            args.server or values.get("mupdate_server") or "127.0.0.1", default_port
        )
    except ValueError:
        raise ToolError("the server's port must be a number", EXIT_USAGE) from None
    user = args.user or values.get("mupdate_authname")
    if not user:
        raise ToolError("no user: give --user or mupdate_authname in --config", EXIT_USAGE)
    if args.password_file:
        password = _first_line(args.password_file)
    elif args.password_env:
        if args.password_env not in os.environ:
            raise ToolError(f"the environment variable {args.password_env} is not set", EXIT_USAGE)
        password = os.environ[args.password_env]
    elif values.get("mupdate_password_file"):
        password = _first_line(values["mupdate_password_file"])
    elif values.get("mupdate_password"):
        password = values["mupdate_password"]
    elif prompt and sys.stdin.isatty():
        password = getpass.getpass(f"Password for {user} at {host}:{port}: ")
    else:
        raise ToolError(
            "no password: give --password-file, --password-env, mupdate_password in --config, or run on a terminal",
            EXIT_USAGE,
        )
    return Target(
        host,
        port,
        user,
        password,
        args.authz or values.get("mupdate_username", ""),
        args.timeout,
        tls,
    )


def _tls_flags(args: argparse.Namespace, tls: ClientTls) -> ClientTls:
    """Flags over the config file's TLS settings (TlsSettingsError is a ValueError)."""

    def get(name: str) -> Any:  # tools built without the TLS group have no such flags
        return getattr(args, name, None)

    if sum(bool(get(f)) for f in ("starttls", "tls", "no_tls")) > 1:
        raise ToolError("--starttls, --tls and --no-tls exclude each other", EXIT_USAGE)
    if bool(get("cert")) != bool(get("key")):
        raise ToolError("--cert and --key go together", EXIT_USAGE)
    changes: dict[str, object] = {}
    if get("starttls"):
        changes["starttls"] = "required"
    if get("no_tls"):
        changes.update(starttls="off", implicit=False)
    if get("tls") or (get("server") and "/tls" in get("server").lower()):
        changes["implicit"] = True
    if get("ca_file"):
        changes["ca_file"] = Path(get("ca_file"))
    if get("no_verify"):
        changes["verify"] = False
    if get("cert"):
        changes.update(cert=Path(get("cert")), key=Path(get("key")))
    if get("allow_plaintext"):
        changes["allow_plaintext"] = True
    try:
        return replace(tls, **changes)  # type: ignore[arg-type]  # checked above
    except TlsSettingsError as exc:
        raise ToolError(str(exc), EXIT_USAGE) from None


async def open_session(reactor: object, target: Target) -> tuple[MupdateClientProtocol, ServerInfo]:
    """Connect and log in, bounded by ``target.timeout``; failures become ToolErrors."""
    from twisted.internet.error import ConnectError, ConnectionLost
    from twisted.internet.error import TimeoutError as TxTimeout

    from mupdate.net.client import AuthenticationFailed, MupdateError, TlsFailed
    from mupdate.net.login import TlsRequired, secure_then_login
    from mupdate.net.server_login import is_loopback
    from mupdate.tls import TlsConfigError, client_options

    protocol = MupdateClientProtocol(reactor)  # type: ignore[arg-type]
    endpoint: Any = HostnameEndpoint(
        reactor, target.host, target.port, timeout=int(target.timeout) or 1
    )
    try:
        if target.tls.implicit:
            endpoint = wrapClientTLS(client_options(target.tls, target.host), endpoint)
        await connectProtocol(endpoint, protocol).addTimeout(target.timeout, reactor)
        assert protocol.transport is not None
        login = secure_then_login(
            protocol,
            target.tls,
            target.host,
            is_loopback(protocol.transport.getPeer()),
            target.authname,
            target.password,
            target.authzid,
        )
        await login.addTimeout(target.timeout, reactor)  # type: ignore[arg-type]
        assert protocol.info is not None
        info = protocol.info  # the banner under TLS when TLS was started
    except TlsConfigError as exc:
        protocol.close()
        raise ToolError(f"TLS: {exc}", EXIT_USAGE) from None
    except (TlsRequired, TlsFailed) as exc:
        protocol.close()
        raise ToolError(tls_failure(target, str(exc)), EXIT_CONNECTION) from None
    except AuthenticationFailed as exc:
        protocol.close()
        raise ToolError(
            f"login to {target.address} as {target.authname} refused: {exc.text.decode(errors='replace')}",
            EXIT_AUTH,
        ) from None
    except (ConnectError, ConnectionLost, TxTimeout, MupdateError, OSError) as exc:
        protocol.close()
        raise ToolError(
            f"cannot reach a MUPDATE server at {target.address}: {exc}", EXIT_CONNECTION
        ) from None
    return protocol, info


def tls_failure(target: Target, text: str) -> str:
    """The operator's line for a refused TLS session: where, why, and for a certificate that
    did not verify, which CA it was checked against."""
    if target.address not in text:
        text = f"{target.address}: {text}"
    if "certificate verify failed" in text:
        tls = target.tls
        against = tls.ca_file or tls.ca_dir or "the system's CA store"
        text += f" (checked against {against}; --ca-file or tls_server_ca_file names the CA)"
    return text
