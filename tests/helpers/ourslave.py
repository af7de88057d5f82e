"""Start and stop OUR MUPDATE slave as a subprocess, through its operator interface.

    mupdate-passwd --file CREDS add admin          (password on stdin)
    twistd -n --pidfile= mupdate-slave --config FILE --port tcp:PORT:interface=127.0.0.1

run with cwd = repo root and PYTHONPATH = repo root, exactly like ourmaster.OurMaster
(this class reuses its process handling: start, readiness polling, stop, log_tail).
The config file is imapd.conf-style with Cyrus option names: who may read from
the slave (`admins`, `mupdate_credentials`), which master it follows
(`mupdate_server` host:port, `mupdate_authname`/`mupdate_password`[/`mupdate_username`]),
`mupdate_retry_delay`, `mupdate_config` (standard | unified), `partition-NAME`,
`mupdate_local_servernames`.

Readiness: the greeting `* OK MUPDATE ... "mupdate://HOST:PORT"` (a slave's greeting names
its master where a master's says "(master)"). A slave may hold clients until its first
sync with the master ends, so each attempt waits up to 2 s for the greeting and the whole
wait is bounded by `start(timeout=...)`.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.cyrus import HOST, PortAllocator
from tests.helpers.ourmaster import (
    OurMaster,
    OurMasterError,
    _passwd_tool,
    twistd_plugin_available,
)
from tests.helpers.rawmupdate import MupdateError, parse_responses

__all__ = ["OurSlave", "OurSlaveError", "our_slave_available"]

OurSlaveError = OurMasterError  # same failure type: setup or readiness failed, log attached


def our_slave_available(timeout: float = 20.0) -> str | None:
    """None when the `mupdate-slave` twistd plugin is found, else why not."""
    return twistd_plugin_available("mupdate-slave", timeout)


class OurSlave(OurMaster):
    """Our `twistd mupdate-slave` following `master_address` (HOST:PORT)."""

    kind = "ours"
    plugin = "mupdate-slave"
    process_name = "our slave"

    def __init__(
        self,
        workdir: Path,
        *,
        master_address: str,
        servername: str = "our-slave",
        admin: str = "admin",
        password: str = "secret",
        master_authname: str = "admin",
        master_password: str = "secret",
        master_username: str | None = None,
        retry_delay: int = 2,
        mode: str = "standard",
        partitions: dict[str, Path] | None = None,
        local_servernames: tuple[str, ...] = (),
        port: int | None = None,
        extra_config: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            workdir,
            servername=servername,
            admin=admin,
            password=password,
            port=port or PortAllocator()(),
            extra_config=extra_config,
        )
        if mode not in ("standard", "unified"):
            raise ValueError(f"mode must be standard or unified, not {mode!r}")
        self.master_address = master_address
        self.master_authname = master_authname
        self.master_password = master_password
        self.master_username = master_username
        self.retry_delay = retry_delay
        self.mode = mode
        self.partitions = dict(partitions or {})
        self.local_servernames = tuple(local_servernames)
        self.host = HOST

    def describe(self) -> str:
        return (
            f"our slave {self.servername!r} on {self.address} following {self.master_address} "
            f"(log {self.log_path})"
        )

    def configure(self) -> None:
        """Write credentials (who may read from the slave) and the config file (idempotent)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if not self.credentials_path.exists():
            self._run_tool(
                [*_passwd_tool(), "--file", str(self.credentials_path), "add", self.admin],
                stdin=self.password + "\n",
            )
        lines: dict[str, str] = {
            "servername": self.servername,
            "configdirectory": str(self.store_dir),
            "admins": self.admin,
            "mupdate_credentials": str(self.credentials_path),
            "mupdate_server": self.master_address,
            "mupdate_authname": self.master_authname,
            "mupdate_password": self.master_password,
            "mupdate_retry_delay": str(self.retry_delay),
            "mupdate_config": self.mode,
            "allowplaintext": "yes",
        }
        if self.master_username is not None:
            lines["mupdate_username"] = self.master_username
        for name, path in self.partitions.items():
            lines[f"partition-{name}"] = str(path)
        if self.local_servernames:
            lines["mupdate_local_servernames"] = " ".join(self.local_servernames)
        lines.update(self.extra_config)
        self.config_path.write_text("".join(f"{k}: {v}\n" for k, v in lines.items()))

    def _ready_greeting(self, line: bytes) -> bool:
        """`* OK MUPDATE ...` whose last string starts with `mupdate://`."""
        if not line.startswith(b"* OK MUPDATE"):
            return False
        try:
            tokens = parse_responses(line + b"\r\n")[0].tokens
        except MupdateError:  # an unparsable greeting is simply "not ready"
            return False
        return len(tokens) > 3 and tokens[-1].startswith(b"mupdate://")
