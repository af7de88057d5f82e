"""Our master as a real `twistd mupdate-master` process on 127.0.0.1: durability, streams, load.

Every client here is a real socket; every wait is bounded by the client's timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.cyrus import PortAllocator, repo_root, wait_until
from tests.helpers.ourmaster import OurMaster, _env, _twistd
from tests.helpers.rawmupdate import Entry, MupdateClient, dbname_key

HOST = "127.0.0.1"


@pytest.fixture
def master(tmp_path):
    m = OurMaster(tmp_path / "master", servername="mupdate-it")
    m.start()
    yield m
    m.stop()


def client(m: OurMaster, timeout: float = 15.0) -> MupdateClient:
    c = MupdateClient.connect(m.host, m.port, timeout=timeout)
    c.authenticate_plain(m.admin, m.password)
    return c


def test_plugin_is_listed_by_twistd():
    out = subprocess.run(
        [*_twistd(), "--help"],
        cwd=repo_root(),
        env=_env(repo_root()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mupdate-master" in out.stdout


def test_embedded_default_prints_a_working_credential_once(tmp_path):
    port = PortAllocator()()
    argv = [
        *_twistd(),
        "-n",
        "--pidfile=",
        "mupdate-master",
        "--port",
        f"tcp:{port}:interface={HOST}",
    ]
    workdir = tmp_path / "default"
    workdir.mkdir()
    out_path = workdir / "out.log"

    def run() -> subprocess.Popen[bytes]:
        with open(out_path, "ab") as out:
            return subprocess.Popen(
                argv, cwd=workdir, env=_env(repo_root()), stdout=out, stderr=subprocess.STDOUT
            )

    def password_shown() -> str | None:
        for line in out_path.read_text().splitlines():
            if line.strip().startswith("password:"):
                return line.split("password:", 1)[1].strip()
        return None

    proc = run()
    try:
        password = wait_until(password_shown, 30, "the generated credential")
        credentials = (workdir / "mupdate-data" / "credentials").read_text()
        assert "admin:pbkdf2-sha256$" in credentials
        assert password not in credentials
        with connect_when_ready(port) as c:
            c.authenticate_plain("admin", str(password))
            assert c.command(b"NOOP").ok
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode in (0, -signal.SIGTERM)  # twistd re-raises the signal it stopped on
    shown_once = out_path.read_text().count("password:")
    proc = run()
    try:
        with connect_when_ready(port) as c:
            c.authenticate_plain("admin", str(password))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert out_path.read_text().count("password:") == shown_once == 1


def connect_when_ready(port: int) -> MupdateClient:
    def attempt() -> MupdateClient | None:
        try:
            return MupdateClient.connect(HOST, port, timeout=5)
        except OSError:
            return None

    return wait_until(attempt, 30, f"a greeting on port {port}")  # type: ignore[return-value]


def test_second_master_on_the_same_directory_is_refused(master):
    other = OurMaster(master.workdir)
    other.store_dir = master.store_dir
    with pytest.raises(AssertionError, match="in use by another mupdate process"):
        other.start(timeout=15)


def test_concurrent_writers_all_acknowledged_and_listed_in_key_order(master):
    errors: list[str] = []

    def writer(n: int) -> None:
        try:
            with client(master) as c:
                for i in range(40):
                    name = f"user.w{n}.m{i}"
                    r = c.command(b"RESERVE", name, f"be{n}!default")
                    a = c.command(b"ACTIVATE", name, f"be{n}!default", f"w{n}\tlrs\t")
                    if not (r.ok and a.ok):
                        errors.append(f"{name}: {r.raw!r} {a.raw!r}")
        except Exception as exc:  # reported below, with the thread's name
            errors.append(f"writer {n}: {exc!r}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with client(master) as c:
        listed = c.list()
    assert len(listed) == 8 * 40
    assert [e.name for e in listed] == sorted((e.name for e in listed), key=dbname_key)
    assert all(e.kind == b"MAILBOX" for e in listed)


def test_update_stream_sees_every_change_in_order(master):
    with client(master) as streamer, client(master) as writer:
        writer.command(b"ACTIVATE", "user.pre", "be1!default", "")
        streamer.send_raw(b"U01 UPDATE\r\n")
        dump = streamer.read_until_tagged(b"U01")
        assert dump.ok
        assert [e.name for e in dump.entries] == [b"user.pre"]
        script = [
            (b"RESERVE", "user.s2", "be1!default"),
            (b"ACTIVATE", "user.s2", "be1!default", "s2\tlrs\t"),
            (b"DELETE", "user.pre"),
            (b"DEACTIVATE", "user.s2", "be2!p"),
            (b"ACTIVATE", "user.s2", "be2!p", "s2\tlrs\t"),
        ]
        for verb, *args in script:
            assert writer.command(verb, *args).ok
        seen = [streamer.read_response() for _ in script]
    assert [(r.tag, r.kind, r.args) for r in seen] == [
        (b"U01", b"RESERVE", (b"user.s2", b"be1!default")),
        (b"U01", b"MAILBOX", (b"user.s2", b"be1!default", b"s2\tlrs\t")),
        (b"U01", b"DELETE", (b"user.pre",)),
        (b"U01", b"RESERVE", (b"user.s2", b"be2!p")),
        (b"U01", b"MAILBOX", (b"user.s2", b"be2!p", b"s2\tlrs\t")),
    ]


def test_restart_keeps_every_acknowledged_write_including_reserved(master):
    with client(master) as c:
        assert c.command(b"RESERVE", "user.r", "be1!default").ok
        assert c.command(b"ACTIVATE", "user.a", "be1!default", "a\tlrs\t").ok
        assert c.command(b"ACTIVATE", "user.gone", "be1!default", "").ok
        assert c.command(b"DELETE", "user.gone").ok
    master.stop()
    master.start()
    with client(master) as c:
        assert c.list() == [
            Entry(b"MAILBOX", b"user.a", b"be1!default", b"a\tlrs\t"),
            Entry(b"RESERVE", b"user.r", b"be1!default", None),
        ]
        assert c.command(b"DELETE", "user.gone").ok  # the tombstone survived too


def test_kill_9_right_after_oks_loses_no_acknowledged_write(master):
    acked: dict[bytes, Entry] = {}
    lock = threading.Lock()
    stop = threading.Event()
    enough = threading.Event()

    def writer(n: int) -> None:
        try:
            with client(master, timeout=10) as c:
                for i in range(10_000):
                    if stop.is_set():
                        return
                    name = f"user.k{n}.{i}".encode()
                    loc = f"be{n}!default".encode()
                    if c.command(b"RESERVE", name, loc).ok:
                        with lock:
                            acked[name] = Entry(b"RESERVE", name, loc, None)
                    if c.command(b"ACTIVATE", name, loc, b"k\tlrs\t").ok:
                        with lock:
                            acked[name] = Entry(b"MAILBOX", name, loc, b"k\tlrs\t")
                            if len(acked) >= 300:
                                enough.set()
        except Exception:  # the kill cuts every connection; that is the point
            return

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    # let a few hundred writes be acknowledged, then kill without warning
    assert enough.wait(timeout=120), f"only {len(acked)} writes acknowledged"
    assert master.proc is not None
    os.kill(master.proc.pid, signal.SIGKILL)
    master.proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    snapshot = dict(acked)
    assert len(snapshot) >= 300
    master.proc = None
    master.start()
    with client(master, timeout=60) as c:
        stored = {e.name: e for e in c.list()}
    lost = [name for name in snapshot if name not in stored]
    assert not lost, f"{len(lost)} acknowledged mailboxes lost, e.g. {lost[:5]}"
    for name, entry in snapshot.items():
        if entry.kind == b"MAILBOX":  # an ACTIVATE was acknowledged: nothing less will do
            assert stored[name] == entry


def test_bad_input_on_one_connection_leaves_the_others_alone(master):
    with client(master) as good:
        bad = MupdateClient.connect(master.host, master.port)
        bad.send_raw(b"X FIND {99999999999}\r\n")
        reply = bad.read_response()
        assert reply.kind in (b"BAD", b"BYE")
        bad.close()
        assert good.command(b"NOOP").ok


def test_admin_export_import_round_trip(master, tmp_path):
    with client(master) as c:
        c.command(b"ACTIVATE", "user.x", "be1!p", "x\tlrs\t")
        c.command(b"RESERVE", "user.y", "be1!p")
    env = _env(repo_root())
    admin = [sys.executable, "-m", "mupdate.tools.admin", "--config", str(master.config_path)]
    exported = subprocess.run(
        [*admin, "export"], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    assert '"user.x"' in exported.stdout
    with client(master) as c:
        c.command(b"ACTIVATE", "user.z", "be2!p", "")
        c.command(b"DELETE", "user.x")
    # Into the running master: one atomic batch, seen by its streams.
    with client(master) as streamer:
        streamer.send_raw(b"U01 UPDATE\r\n")
        assert streamer.read_until_tagged(b"U01").ok
        done = subprocess.run(
            [*admin, "import"],
            env=env,
            input=exported.stdout,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "1 added, 0 changed, 1 removed" in done.stderr
        seen = {(r.kind, r.args[0]) for r in (streamer.read_response(), streamer.read_response())}
        assert seen == {(b"MAILBOX", b"user.x"), (b"DELETE", b"user.z")}
    with client(master) as c:
        assert {e.name for e in c.list()} == {b"user.x", b"user.y"}
    # Into a stopped master's database.
    master.stop()
    shutil.rmtree(master.store_dir)
    master.store_dir.mkdir()
    offline = subprocess.run(
        [*admin, "import"],
        env=env,
        input=exported.stdout,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert offline.returncode == 0, offline.stderr
    master.start()
    with client(master) as c:
        assert {e.name for e in c.list()} == {b"user.x", b"user.y"}
    conflicts = subprocess.run(
        [*admin, "conflicts"], env=env, capture_output=True, text=True, timeout=60
    )
    assert conflicts.returncode == 1
    assert conflicts.stdout.split() == ["reserved", "user.y", "be1!p"]


def test_installed_package_provides_the_plugin_and_scripts(tmp_path):
    """`pip install .` (which ./run-tests does) ships the plugin and the console scripts."""
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    listed = subprocess.run(
        [str(bindir / "twistd"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "mupdate-master" in listed.stdout, "run ./run-tests, which installs the package first"
    for script in ("mupdate-passwd", "mupdate-admin"):
        shown = subprocess.run(
            [str(bindir / script), "--help"], env=env, capture_output=True, text=True, timeout=60
        )
        assert shown.returncode == 0
        assert script in shown.stdout
