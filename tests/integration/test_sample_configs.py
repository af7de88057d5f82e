"""Every sample config in etc/ loads as written, and starts as a real twistd process.

Loading: each sample goes through the role's own ``build_settings`` (what ``twistd
mupdate-master|mupdate-slave --config FILE`` and the tools do) unchanged.

Starting: a tmp copy of each sample with only paths and ports rewritten (see ``localize``):

- every absolute path in a value (configdirectory, mupdate_credentials, partition-NAME,
  audit log, ...) moves under the test's tmp directory, keeping its shape;
- every ``*_listen`` endpoint (mupdate_listen, mupdate_tls_listen, mupdate_metrics_listen,
  ...) gets a free port on 127.0.0.1;
- a slave's ``mupdate_server`` becomes the address of the master started from
  ``mupdate-master.conf``.

Nothing else changes: the master keeps allowplaintext: no (loopback plaintext is what lets a
PLAIN login in), the slaves log in with the sample's own ``mupdate_authname``/
``mupdate_password`` (the test gives the master that credential), and the unified slave
keeps its guard and healing settings. Each is started with ``twistd -n --pidfile= PLUGIN
--config COPY`` and no --port (so ``mupdate_listen`` is what is tested) and must greet on its
port: ``* OK MUPDATE ... (master)`` for a master, ``... "mupdate://..."`` for a slave, which
greets only after its first sync with the master. The replication-pair master is also checked
for what its comments promise: the pair's two credentials repeat each other's writes at the
same location and get OK, another location gets NO, a repeated DELETE gets OK (tombstone),
and a pair credential cannot write another backend's mailbox (authority).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from mupdate.master.tap import build_settings as master_settings
from mupdate.slave.tap import build_settings as slave_settings
from tests.helpers.cyrus import HOST, PortAllocator, repo_root
from tests.helpers.ourmaster import OurMaster, _env, _passwd_tool, _twistd
from tests.helpers.ourslave import OurSlave
from tests.helpers.rawmupdate import MupdateClient

SAMPLES = {
    "mupdate-master.conf": "mupdate-master",
    "mupdate-replication-pair.conf": "mupdate-master",
    "mupdate-slave-frontend.conf": "mupdate-slave",
    "mupdate-slave-unified.conf": "mupdate-slave",
    # Cyrus's mailboxes.db store: these read Cyrus's /etc/imapd.conf (installed with Cyrus);
    # tests/interop/test_cyrus_store_samples.py starts them next to real Cyrus nodes.
    "mupdate-slave-cyrus-frontend.conf": "mupdate-slave",
    "mupdate-slave-cyrus-unified.conf": "mupdate-slave",
}
_ENDPOINT = re.compile(r"^(?P<kind>tcp6?|ssl):(?P<port>\d+)(?P<rest>(?::[^\s]*)?)$")
_RECORD = re.compile(r"^(?P<key>[A-Za-z0-9_.-]+)(?P<sep>\s*:\s*)(?P<value>.*)$")


def sample(name: str) -> Path:
    return repo_root() / "etc" / name


def config_value(text: str, key: str) -> str | None:
    for line in text.splitlines():
        match = _RECORD.match(line)
        if match and match["key"] == key:
            return match["value"].strip()
    return None


def _endpoint(word: str, port: int) -> str:
    match = _ENDPOINT.match(word)
    if match is None:
        raise AssertionError(f"cannot localize listen endpoint {word!r}")
    options = [o for o in match["rest"].split(":") if o and not o.startswith("interface=")]
    return ":".join([match["kind"], str(port), *options, f"interface={HOST}"])


def localize(
    text: str, root: Path, ports: PortAllocator, master: str | None = None
) -> tuple[str, dict[str, list[int]]]:
    """Rewrite only paths and ports (and a slave's mupdate_server); returns the new text and
    the ports given to each ``*_listen`` key."""
    out: list[str] = []
    listened: dict[str, list[int]] = {}
    for line in text.splitlines():
        match = _RECORD.match(line)
        if match is None or not match["value"].strip():
            out.append(line)
            continue
        key, value = match["key"], match["value"].strip()
        if key.endswith("_listen"):
            given = [ports() for _ in value.split()]
            listened[key] = given
            value = " ".join(_endpoint(w, p) for w, p in zip(value.split(), given, strict=True))
        elif key == "mupdate_server" and master is not None:
            value = master
        else:
            value = " ".join(str(root) + w if w.startswith("/") else w for w in value.split())
        out.append(f"{key}{match['sep']}{value}")
    return "\n".join(out) + "\n", listened


class SampleNode(OurMaster):
    """A twistd process from a localized sample (OurMaster's start/ready/stop machinery)."""

    def __init__(self, workdir: Path, name: str, text: str, port: int) -> None:
        super().__init__(workdir, port=port)
        self.plugin = SAMPLES[name]
        self.process_name = f"{self.plugin} from etc/{name}"
        self.config_path = workdir / name
        self.log_path = workdir / f"{name}.log"
        self.text = text

    def configure(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.text)

    @property
    def cwd(self) -> Path:
        return self.workdir

    def argv(self) -> list[str]:
        # No --port: the sample's own listen keys, localized, are what is under test.
        return [*_twistd(), "-n", "--pidfile=", self.plugin, "--config", str(self.config_path)]

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)

    def _ready_greeting(self, line: bytes) -> bool:
        if self.plugin == "mupdate-slave":
            return OurSlave._ready_greeting(self, line)  # type: ignore[arg-type]
        return line.startswith(b"* OK MUPDATE") and b"(master)" in line


def add_user(credentials: Path, user: str, password: str) -> None:
    done = subprocess.run(
        [*_passwd_tool(), "--file", str(credentials), "add", user],
        input=password + "\n",
        cwd=repo_root(),
        env=_env(repo_root()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def prepare(
    tmp_path: Path, name: str, master: str | None = None, users: tuple[str, ...] = ("admin",)
) -> SampleNode:
    """A localized copy of etc/NAME with its readers' credentials (password "secret")."""
    workdir = tmp_path / name.removesuffix(".conf").removeprefix("mupdate-")
    root = workdir / "root"
    text, listened = localize(sample(name).read_text(), root, PortAllocator(), master)
    assert "mupdate_listen" in listened, f"{name} sets no mupdate_listen"
    credentials = config_value(text, "mupdate_credentials")
    assert credentials, f"{name} names no mupdate_credentials"
    for user in users:
        add_user(Path(credentials), user, "secret")
    return SampleNode(workdir, name, text, listened["mupdate_listen"][0])


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_loads_as_written(name):
    build = master_settings if SAMPLES[name] == "mupdate-master" else slave_settings
    settings = build(str(sample(name)), None, [])
    assert settings.admins


def test_sample_master_and_both_slaves_start_and_greet(tmp_path):
    master = prepare(tmp_path, "mupdate-master.conf")
    frontend = unified = None
    # the slaves log in as their sample's mupdate_authname with its mupdate_password
    for name in ("mupdate-slave-frontend.conf", "mupdate-slave-unified.conf"):
        text = sample(name).read_text()
        assert config_value(text, "mupdate_authname") == "admin"
        assert config_value(text, "mupdate_password") == "secret"
    try:
        master.start()
        with MupdateClient.connect(master.host, master.port) as c:
            c.authenticate_plain("admin", "secret")
            assert c.command("RESERVE", "user.alice", "be9.example.test!default").ok
            assert c.command("ACTIVATE", "user.alice", "be9.example.test!default", "").ok
        frontend = prepare(tmp_path, "mupdate-slave-frontend.conf", master.address)
        unified = prepare(tmp_path, "mupdate-slave-unified.conf", master.address)
        Path(config_value(unified.text, "partition-default") or "").mkdir(parents=True)
        frontend.start()
        unified.start()
        for slave in (frontend, unified):
            with MupdateClient.connect(slave.host, slave.port) as c:
                c.authenticate_plain("admin", "secret")
                found = c.find("user.alice")
                assert found is not None
                assert found.location == b"be9.example.test!default"
    finally:
        for node in (unified, frontend, master):
            if node is not None:
                node.stop()


def test_sample_replication_pair_master_starts_and_does_what_it_says(tmp_path):
    pair = prepare(tmp_path, "mupdate-replication-pair.conf", users=("admin", "be1a", "be1b"))
    here = "be1.example.test!default"
    try:
        pair.start()
        with (
            MupdateClient.connect(pair.host, pair.port) as primary,
            MupdateClient.connect(pair.host, pair.port) as replica,
        ):
            primary.authenticate_plain("be1a", "secret")
            replica.authenticate_plain("be1b", "secret")
            for c in (primary, replica):  # the replica repeats what the primary did
                assert c.command("RESERVE", "user.bob", here).ok
                assert c.command("ACTIVATE", "user.bob", here, "bob\tlrs\t").ok
            assert replica.find("user.bob").acl == b"bob\tlrs\t"
            assert not replica.command("RESERVE", "user.bob", "be1.example.test!other").ok
            assert not primary.command("RESERVE", "user.eve", "be2.example.test!default").ok
            for c in (primary, replica):
                assert c.command("DELETE", "user.bob").ok
            assert primary.find("user.bob") is None
    finally:
        pair.stop()
