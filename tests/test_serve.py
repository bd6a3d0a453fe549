"""xsupervise serve: a real daemon process, real sockets, real Xvfb, our own NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from conftest import (
    XSUPERVISE,
    ask_as,
    fake_server,
    free_display_number,
    read_report,
    requires_xvfb,
)
from xsupervise.client import Client, ControlError, DaemonUnavailable
from xsupervise.daemon.protocol import OPS

requires_socket_activate = pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate missing"
)


class Notifications:
    """Our own NOTIFY_SOCKET: the datagrams sd_notify sends, as dicts."""

    def __init__(self, path: Path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.seen: list[dict[str, str]] = []

    def next(self, timeout: float = 30) -> dict[str, str]:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, f"no notification within {timeout} s; seen: {self.seen}"
        data = self.sock.recv(65536).decode()
        message = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
        self.seen.append(message)
        return message

    def until(self, key: str, timeout: float = 30) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.1, deadline - time.monotonic()))
            if key in message:
                return message

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(tmp_path: Path):
    listener = Notifications(tmp_path / "notify.sock")
    yield listener
    listener.close()


def write_config(path: Path, sessions: dict[str, dict]) -> Path:
    lines = []
    for name, table in sessions.items():
        lines.append(f"[session.{name}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class Daemon:
    """`xsupervise serve` as a child process; stderr goes to a file we can read."""

    def __init__(
        self,
        tmp_path: Path,
        notifications: Notifications | None,
        *args: str,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        argv: list[str] | None = None,
        socket_path: Path | None = None,
    ):
        self.socket = str(socket_path or tmp_path / "control.sock")
        self.log = tmp_path / f"serve-{time.monotonic_ns()}.log"
        environ = {**os.environ, **(env or {})}
        if notifications is not None:
            environ["NOTIFY_SOCKET"] = notifications.path
        if config is not None:
            environ["XSUPERVISE_CONFIG"] = str(config)
        with open(self.log, "wb") as stderr:
            self.process = subprocess.Popen(
                argv or [*XSUPERVISE, "serve", "--socket", self.socket, *args],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=environ,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text()

    def client(self) -> Client:
        return Client(self.socket, timeout=30).connect()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


def xdpyinfo(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["xdpyinfo"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30
    )


# -- readiness, status, watchdog, stopping ------------------------------------------------


@requires_xvfb
def test_ready_only_once_the_configured_display_answers(tmp_path: Path, notifications):
    config = write_config(tmp_path / "config.toml", {"slow": {"server": fake_server("slow=1.0")}})
    started = time.monotonic()
    daemon = Daemon(tmp_path, notifications, config=config, env={"WATCHDOG_USEC": "200000"})
    try:
        ready = notifications.until("READY")
        waited = time.monotonic() - started
        assert waited >= 1.0, f"READY=1 after {waited:.2f} s, before the server could answer"
        assert ready["STATUS"].startswith("1 display ready (:"), ready
        with daemon.client() as client:
            (session,) = [s for s in client.list() if s["name"] == "slow"]
        env = {"DISPLAY": session["display"], "XAUTHORITY": session["xauthority"]}
        assert xdpyinfo(env).returncode == 0  # answers at once: READY=1 was not early
        assert session["kind"] == "daemon" and session["supervisor_pid"] == daemon.pid
        pings = [notifications.until("WATCHDOG") for _ in range(3)]
        assert all(ping["WATCHDOG"] == "1" for ping in pings)
        assert not [m for m in notifications.seen if "READY" in m][1:], "READY=1 sent twice"
        daemon.process.send_signal(signal.SIGTERM)
        stopping = notifications.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        assert daemon.process.wait(timeout=30) == 0
        assert xdpyinfo(env).returncode != 0  # its display went with it
    finally:
        daemon.stop()


@pytest.mark.parametrize("mode", ["exit", "number"])
def test_ready_also_when_a_configured_display_is_failed(tmp_path: Path, notifications, mode):
    # "number": the server writes a display number but nothing answers there. A daemon that
    # took the number for readiness would report the display ready, not FAILED.
    number = free_display_number(start=920)
    server, why = {
        "exit": (fake_server("exit"), "cannot open virtual screen"),
        "number": (
            fake_server(f"number={number}"),
            f"wrote display number {number} but nothing answers",
        ),
    }[mode]
    config = write_config(
        tmp_path / "config.toml",
        {
            "broken": {
                "server": server,
                "start_limit_burst": 1,  # FAILED at the 2nd failed start (one retry)
                "displayfd_timeout": 2,
                "backoff_initial": 0.05,
                "backoff_max": 0.1,
            }
        },
    )
    daemon = Daemon(tmp_path, notifications, config=config)
    try:
        ready = notifications.until("READY")
        assert ready["STATUS"] == "0 displays ready, 1 FAILED (broken)", ready
        with daemon.client() as client:
            (entry,) = client.status("broken")
        assert entry["state"] == "failed" and why in entry["last_failure"], entry
        assert daemon.process.poll() is None  # FAILED loudly, but still serving
        assert "session broken is FAILED" in daemon.output()
    finally:
        assert daemon.stop() == 0


@requires_xvfb
def test_start_is_a_correct_type_notify_service(tmp_path: Path, notifications):
    env = {**os.environ, "NOTIFY_SOCKET": notifications.path, "WATCHDOG_USEC": "200000"}
    process = subprocess.Popen(
        [*XSUPERVISE, "start", "--json", "--server", fake_server("slow=0.5")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        ready = notifications.until("READY")
        facts = json.loads(process.stdout.readline())
        assert (
            ready["STATUS"] == f"display {facts['display']} ready (X server pid "
            f"{facts['server_pid']})"
        )
        assert ready["MAINPID"] == str(process.pid)
        assert (
            xdpyinfo({"DISPLAY": facts["display"], "XAUTHORITY": facts["xauthority"]}).returncode
            == 0
        )
        assert notifications.until("WATCHDOG")["WATCHDOG"] == "1"
        process.send_signal(signal.SIGTERM)
        assert notifications.until("STOPPING")["STOPPING"] == "1"
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()


# -- the control socket ----------------------------------------------------------------------


@requires_xvfb
def test_control_requests_start_list_status_stop_and_reset(tmp_path: Path, notifications):
    daemon = Daemon(tmp_path, notifications)
    try:
        notifications.until("READY")
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid
            session = client.start(":auto", name="gui", screen="800x600x24")
            assert session["screen"] == "800x600x24"
            assert set(session) == {"ok", *OPS["start"].reply}  # the protocol's reply shape
            assert xdpyinfo(session["env"]).returncode == 0
            again = client.start(":auto", name="gui")  # joins the running session
            assert again["display"] == session["display"]
            assert [s["name"] for s in client.list()] == ["gui"]
            (entry,) = client.status("gui")
            assert entry["state"] == "ready"
            with pytest.raises(ControlError) as refused:
                client.start(":auto", name="bad", server=fake_server("exit"))
            assert refused.value.exit_code == 3 and "cannot open virtual screen" in str(
                refused.value
            )
            assert client.reset("bad") is True
            with pytest.raises(ControlError) as typo:  # a misspelt setting is no silent default
                client.start(":auto", name="typo", scren="800x600x24")
            assert typo.value.exit_code == 2 and "unknown field(s) for start: scren" in str(
                typo.value
            )
            with pytest.raises(ControlError) as unknown:
                client.stop(name="nope")
            assert unknown.value.exit_code == 6
            with pytest.raises(ControlError) as auto:  # ":auto" must not mean "everything"
                client.stop(":auto")
            assert auto.value.exit_code == 2
            two = [client.start(":auto") for _ in range(2)]  # unnamed: a display each
            assert two[0]["display"] != two[1]["display"]
            client.stop(two[0]["display"])
            client.stop(two[1]["display"])
        # The command line talks to the daemon too.
        cli = subprocess.run(
            [*XSUPERVISE, "list", "--socket", daemon.socket],
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert "daemon" in cli.stdout and "gui" in cli.stdout
        stop = subprocess.run(
            [*XSUPERVISE, "stop", session["display"], "--socket", daemon.socket],
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert stop.returncode == 0 and "stopped (session gui" in stop.stdout
        assert xdpyinfo(session["env"]).returncode != 0
        detached = subprocess.run(
            [
                *XSUPERVISE,
                "start",
                "--detach",
                "--json",
                "--socket",
                daemon.socket,
                "--name",
                "kept",
            ],
            text=True,
            capture_output=True,
            timeout=30,
        )
        assert detached.returncode == 0, detached.stderr
        kept = json.loads(detached.stdout)
        assert kept["supervisor_pid"] == daemon.pid  # it lives in the daemon, not in the CLI
        assert (
            xdpyinfo({"DISPLAY": kept["display"], "XAUTHORITY": kept["xauthority"]}).returncode == 0
        )
    finally:
        assert daemon.stop() == 0


def test_detach_without_a_daemon_says_how_to_get_one(tmp_path: Path):
    result = subprocess.run(
        [*XSUPERVISE, "start", "--detach", "--socket", str(tmp_path / "none.sock")],
        text=True,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 5
    assert "no xsupervise serve answers on" in result.stderr and "none.sock" in result.stderr


@requires_xvfb
def test_sighup_reloads_the_config(tmp_path: Path, notifications):
    config = write_config(tmp_path / "config.toml", {"one": {}})
    daemon = Daemon(tmp_path, notifications, config=config)
    try:
        notifications.until("READY")
        with daemon.client() as client:
            (first,) = client.list()
        write_config(config, {"one": {}, "two": {"screen": "640x480x24"}})
        daemon.process.send_signal(signal.SIGHUP)
        assert "RELOADING" in notifications.until("RELOADING")
        ready = notifications.until("READY")
        assert ready["STATUS"].startswith("2 displays ready"), ready
        with daemon.client() as client:
            sessions = {s["name"]: s for s in client.list()}
        assert set(sessions) == {"one", "two"}
        assert sessions["one"]["server_pid"] == first["server_pid"]  # unchanged: untouched
        config.write_text("this is not toml")
        daemon.process.send_signal(signal.SIGHUP)
        notifications.until("READY")
        assert "config not reloaded, keeping the old one" in daemon.output()
        with daemon.client() as client:
            assert len(client.list()) == 2
    finally:
        assert daemon.stop() == 0


# -- one listener per address ------------------------------------------------------------------


def test_a_second_daemon_on_a_served_path_names_the_first(tmp_path: Path, notifications):
    first = Daemon(tmp_path, notifications)
    try:
        notifications.until("READY")
        second = Daemon(tmp_path, None)
        assert second.process.wait(timeout=30) == 5
        line = second.output()
        assert f"pid {first.pid}" in line and "serve" in line, line
        with first.client() as client:
            assert client.ping()["pid"] == first.pid  # the first one is unharmed
    finally:
        assert first.stop() == 0


def fill_listen_queue(path: str) -> list[socket.socket]:
    """Connect to ``path`` until its listen queue is full (a non-blocking connect then fails
    with EAGAIN); the caller closes the connections."""
    queued = []
    try:
        while True:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
            queued.append(client)
            client.connect(path)
    except BlockingIOError:
        pass
    return queued


def test_a_listener_too_busy_to_accept_is_named_as_such_and_left_alone(tmp_path: Path):
    from xsupervise.host.listener import SocketInUse, bind

    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
        stuck.bind(path)
        stuck.listen(0)  # never accepts: once its backlog is full, a connect() blocks
        queued = fill_listen_queue(path)
        try:
            with pytest.raises(SocketInUse) as refused:
                bind(path)
        finally:
            for client in queued:
                client.close()
    # Named from the kernel's tables, not by connecting: a full backlog hides nothing.
    assert f"already served by pid {os.getpid()} (" in str(refused.value)
    assert "pid -1" not in str(refused.value) and os.path.exists(path)


def test_a_reply_that_is_not_json_is_one_clear_error(tmp_path: Path):
    path = str(tmp_path / "other.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)
        other.listen(1)
        with Client(path, timeout=10) as client:  # connects
            peer, _ = other.accept()
            with peer:
                peer.sendall(b"220 hello, I am not xsupervise\n")
                with pytest.raises(ControlError) as failure:
                    client.ping()
    assert "is not a JSON object" in str(failure.value) and path in str(failure.value)


def test_a_stale_socket_file_is_replaced(tmp_path: Path, notifications):
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "control.sock"))
    stale.close()  # the file stays; nothing listens
    daemon = Daemon(tmp_path, notifications)
    try:
        notifications.until("READY")
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid
        assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o600  # ours alone to connect to
    finally:
        assert daemon.stop() == 0
    assert not (tmp_path / "control.sock").exists()  # ours, so removed on exit


def socket_activated_serve(path: Path) -> list[str]:
    """`serve` as systemd's socket unit starts it: the socket passed, named "control"."""
    variables = ("NOTIFY_SOCKET", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME")
    passed = [arg for name in variables for arg in ("-E", name)]
    activate = ["systemd-socket-activate", "-l", str(path), "--fdname=control", *passed]
    return [*activate, *XSUPERVISE, "serve"]


@requires_socket_activate
def test_socket_activation_takes_the_socket_and_binds_none(
    tmp_path: Path, notifications, runtime_dir: Path
):
    path = tmp_path / "activated.sock"
    argv = socket_activated_serve(path)
    daemon = Daemon(tmp_path, notifications, argv=argv, socket_path=path)
    try:
        # systemd-socket-activate listens first and execs us on the first connection.
        deadline = time.monotonic() + 30
        while not path.exists():  # (it has no readiness signal of its own)
            assert time.monotonic() < deadline and daemon.process.poll() is None
            select.select([], [], [], 0.01)
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid  # exec'd in place: the same pid
        notifications.until("READY")
        listening = [
            c
            for c in psutil.Process(daemon.pid).net_connections(kind="unix")
            if c.status == psutil.CONN_LISTEN or c.raddr == ""
        ]
        paths = [c.laddr for c in listening if c.laddr]
        assert paths.count(str(path)) >= 1 and set(paths) == {str(path)}, listening
        assert not (runtime_dir / "control.sock").exists()  # never bound a second one
        assert "socket-activated" in daemon.output()
        # A plain daemon on the activated path is refused, naming the holder.
        second = Daemon(tmp_path, None, socket_path=path)
        assert second.process.wait(timeout=30) == 5
        assert f"pid {daemon.pid}" in second.output()
    finally:
        assert daemon.stop() == 0


def test_a_stop_racing_a_start_leaves_no_session_and_no_files(
    tmp_path: Path, notifications, runtime_dir: Path
):
    daemon = Daemon(tmp_path, notifications)
    try:
        notifications.until("READY")
        for attempt in range(20):
            with daemon.client() as starter, daemon.client() as stopper:
                starter._sock.sendall(
                    json.dumps(
                        {
                            "op": "start",
                            "name": f"racy{attempt}",
                            "server": fake_server("never"),
                            "displayfd_timeout": 30,
                            # A start stopped before its server told its number waits the
                            # grace for it (stop_races): the race, not the grace, is tested.
                            "kill_grace": 0.2,
                        }
                    ).encode()
                    + b"\n"
                )
                stopped = stopper.request("stop", all=True)
                reply = json.loads(starter._sock.makefile("rb").readline())
            assert stopped["ok"]
            if reply["ok"]:  # the stop came first: the start went ahead; stop it now
                with daemon.client() as client:
                    client.stop(name=f"racy{attempt}")
        with daemon.client() as client:
            assert client.ping()["sessions"] == 0
        assert list((runtime_dir / "sessions").iterdir()) == []
    finally:
        assert daemon.stop() == 0


# -- access and abuse ------------------------------------------------------------------------


@pytest.mark.root("it acts as another uid")
@requires_socket_activate
@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another uid")
def test_another_uid_is_refused(tmp_path: Path, notifications):
    # A socket another user can reach (as systemd may be told to make): only SO_PEERCRED
    # stands between that user and the daemon.
    shared = Path(tempfile.mkdtemp(prefix="xsupervise-test-"))
    shared.chmod(0o755)
    path = shared / "control.sock"
    argv = socket_activated_serve(path)
    old_umask = os.umask(0)
    try:
        daemon = Daemon(tmp_path, notifications, argv=argv, socket_path=path)
    finally:
        os.umask(old_umask)
    try:
        deadline = time.monotonic() + 30
        while not path.exists():
            assert time.monotonic() < deadline and daemon.process.poll() is None
            select.select([], [], [], 0.01)
        path.chmod(0o666)
        assert ask_as(os.getuid(), str(path))["ok"] is True  # starts the daemon
        notifications.until("READY")
        refused = ask_as(65534, str(path))
        assert refused["ok"] is False and "uid 65534 may not use this daemon" in refused["error"]
        with daemon.client() as client:
            assert client.ping()["ok"]
    finally:
        assert daemon.stop() == 0
        shutil.rmtree(shared)


def test_ten_thousand_malformed_requests_leave_it_answering(tmp_path: Path, notifications):
    daemon = Daemon(tmp_path, notifications)
    half_open: list[socket.socket] = []
    try:
        notifications.until("READY")
        garbage = [
            b"\x00\xff garbage\n",
            b"not json\n",
            b"[1, 2, 3]\n",
            b'"op"\n',
            b'{"op": 42}\n',
            b'{"op": "explode"}\n',
            b"[" * 5000 + b"\n",
            b'{"op": "start", "display": ":x"}\n',
            b'{"op": "stop"}\n',
            b'{"op": "reset", "name": 7}\n',
            b'{"op": "status", "target": []}\n',
            b"\n",
            b"{}\n",
            b'{"op": "start", "screen": "huge"}\n',
        ]
        sent = answered = 0
        for round_number in range(100):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(30)
                sock.connect(daemon.socket)
                batch = [garbage[(round_number + i) % len(garbage)] for i in range(96)]
                sock.sendall(b"".join(batch))
                sent += len(batch)
                stream = sock.makefile("rb")
                for _ in batch:
                    reply = json.loads(stream.readline())
                    assert reply["ok"] is False and reply["error"], reply
                    answered += 1
            # Oversized lines, clients that vanish mid-line, and ones that never finish.
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(daemon.socket)
                if round_number % 20 == 0:
                    sock.sendall(b"x" * (80 * 1024))
                    assert b"longer than" in sock.makefile("rb").readline()
                else:
                    sock.sendall(b'{"op": "pi')
            sent += 1
            for _ in range(3):
                hanging = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                half_open.append(hanging)
                hanging.connect(daemon.socket)
                hanging.sendall(b'{"op": "ping"')
                sent += 1
        assert sent >= 10_000 and answered == 9_600
        # Clients that pipeline requests and never read the replies: evicted, fds freed.
        for _wave in range(3):
            for _ in range(60):
                greedy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                half_open.append(greedy)
                # A blocking connect waits for room in the listen backlog; a non-blocking
                # one fails with EAGAIN whenever the daemon is a few accepts behind.
                greedy.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", 30, 0))
                greedy.connect(daemon.socket)
                greedy.setblocking(False)
                try:
                    greedy.send(b'{"op": "ping"}\n' * 4000)
                except BlockingIOError:
                    pass
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid
        open_fds = len(os.listdir(f"/proc/{daemon.pid}/fd"))
        assert open_fds < 64 + 30, f"{open_fds} fds open: clients beyond the limit were kept"
        # 300 half-open clients are still connected: the daemon dropped the idlest for room.
        with daemon.client() as client:
            assert client.ping()["pid"] == daemon.pid
        for hanging in half_open:
            hanging.close()
        assert daemon.process.poll() is None
        with daemon.client() as client:
            assert client.ping()["ok"]
    finally:
        for hanging in half_open:
            hanging.close()
        assert daemon.stop() == 0


# -- one protocol for the daemon and the client ------------------------------------------------


def _in_process_daemon():
    """A Daemon object, not running: enough to answer requests that start nothing."""
    from xsupervise.daemon.daemon import Daemon as DaemonObject
    from xsupervise.host.paths import RuntimeDir

    return DaemonObject(RuntimeDir.discover(), listener=None)


def _answer(daemon, request: dict | bytes) -> dict:
    import asyncio

    line = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    return asyncio.run(daemon.control.handle_line(line))


def test_the_daemon_and_the_client_serve_the_same_ops_and_fields(monkeypatch):
    import inspect

    from xsupervise.daemon.daemon import DaemonOps
    from xsupervise.launch.settings import FIELDS as SETTINGS

    served = {
        name
        for name, member in inspect.getmembers(DaemonOps)
        if not name.startswith("_") and inspect.iscoroutinefunction(member)
    }
    methods = {name for name in dir(Client) if not name.startswith("_")}
    assert served == set(OPS)
    assert set(OPS) <= methods, f"no Client method for {set(OPS) - methods}"
    assert methods - set(OPS) == {"connect", "close", "request"}
    sent: list[tuple[str, dict]] = []
    monkeypatch.setattr(
        Client,
        "_ask",
        lambda self, op, fields, reply_within=None: (
            sent.append((op, fields)) or {"stopped": [], "sessions": [], "had_history": False}
        ),
    )
    client = Client("/nonexistent.sock")
    for op in OPS.values():
        # The daemon's coroutine takes exactly the op's fields (settings as **settings).
        parameters = inspect.signature(getattr(DaemonOps, op.name)).parameters
        taken = {name for name, p in parameters.items() if p.kind != p.VAR_KEYWORD} - {"self"}
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            taken |= set(SETTINGS)
        assert taken == set(op.fields), op
        # The client's method sends that op, and can send each of its fields.
        method = getattr(client, op.name)
        parameters = inspect.signature(method).parameters
        arguments = {
            name: (
                ":5"
                if name == "display"
                else 1.0
                if name == "wait"
                else True
                if name in ("all", "no_wait")
                else "x"
            )
            for name, p in parameters.items()
            if p.kind == p.KEYWORD_ONLY or p.kind == p.POSITIONAL_OR_KEYWORD
        }
        if any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            arguments["screen"] = "800x600x24"
        sent.clear()
        method(**arguments)
        ((sent_op, fields),) = sent
        assert sent_op == op.name and set(fields) <= set(op.fields), (op, fields)
        can_send = set(arguments) | (set(SETTINGS) if "screen" in arguments else set())
        assert set(op.fields) <= can_send, f"Client.{op.name} cannot send {op.fields}"


def test_the_client_refuses_what_the_daemon_refuses_with_the_same_words():
    daemon = _in_process_daemon()
    client = Client("/nonexistent.sock")  # never connects: refused before sending
    for op, fields in [
        ("start", {"scren": "800x600x24"}),
        ("stop", {"wait": "soon"}),
        ("stop", {"wait": 5000}),
        ("reset", {"name": 7}),
        ("status", {"target": []}),
        ("explode", {}),
    ]:
        reply = _answer(daemon, {"op": op, **fields})
        with pytest.raises(ControlError) as refused:
            client.request(op, **fields)
        assert reply["ok"] is False and reply["exit_code"] == 2, reply
        assert (str(refused.value), refused.value.exit_code) == (reply["error"], 2)


def test_replies_have_the_fields_the_protocol_names(runtime_dir: Path):
    daemon = _in_process_daemon()
    requests = [{"op": "ping"}, {"op": "list"}, {"op": "status"}, {"op": "reset", "name": "gui"}]
    for request in requests:
        reply = _answer(daemon, request)
        assert set(reply) == {"ok", *OPS[request["op"]].reply}, reply
    with_stop = _answer(daemon, {"op": "stop", "name": "nope"})
    assert with_stop == {
        "ok": False,
        "exit_code": 6,
        "error": "no session named 'nope' runs in this daemon.",
    }
    assert _answer(daemon, b"not json\n")["exit_code"] == 2


def test_stop_with_wait_waits_for_the_reply_beyond_the_client_timeout(
    tmp_path: Path, notifications
):
    # The server ignores SIGTERM: stopping it takes the whole kill grace (0.6 s), three times
    # this client's timeout (0.2 s). A stop told to wait must outlast its client's timeout.
    report = tmp_path / "report"
    daemon = Daemon(tmp_path, notifications, env={"FAKE_X_REPORT": str(report)})
    try:
        notifications.until("READY")
        with daemon.client() as starter, Client(daemon.socket, timeout=0.2) as client:
            starter._sock.sendall(
                json.dumps(
                    {
                        "op": "start",
                        "name": "stubborn",
                        "server": fake_server("ignore-term"),
                        "displayfd_timeout": 30,
                        "kill_grace": 0.6,
                    }
                ).encode()
                + b"\n"
            )
            deadline = time.monotonic() + 30
            while "ignoring" not in read_report(report):  # (it has no other signal)
                assert time.monotonic() < deadline and daemon.process.poll() is None
                select.select([], [], [], 0.01)
            started = time.monotonic()
            assert client.stop(name="stubborn", wait=5) == [
                f"stubborn: stopped (session stubborn of xsupervise serve pid {daemon.pid})"
            ]
            assert time.monotonic() - started >= 0.6  # it did wait through the grace
            assert client.ping()["sessions"] == 0
            assert client.timeout == 0.2 and client._sock.gettimeout() == 0.2  # restored
    finally:
        assert daemon.stop() == 0


# -- the journal -------------------------------------------------------------------------------


@requires_xvfb
def test_journal_fields_reach_the_handler(tmp_path: Path, monkeypatch):
    """Under a simulated JOURNAL_STREAM (it matches our stderr), sessions log through
    systemd's JournalHandler with SESSION, DISPLAY, SERVER_PID and STATE fields."""
    import asyncio
    import logging

    from systemd.journal import JournalHandler

    from xsupervise.host import log
    from xsupervise.host.paths import RuntimeDir
    from xsupervise.host.processes import run_steps
    from xsupervise.launch.settings import load_settings
    from xsupervise.session.session import Event, Mode, Session

    with open(tmp_path / "stderr", "w") as stderr:
        info = os.fstat(stderr.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{info.st_dev}:{info.st_ino}")
        handler = log.handler_for(logging, stderr=stderr)
        other = log.handler_for(logging, environ={"JOURNAL_STREAM": "1:2"}, stderr=stderr)
    assert isinstance(handler, JournalHandler) and not isinstance(other, JournalHandler)
    sent: list[tuple[str, dict]] = []
    handler.send = lambda MESSAGE, **fields: sent.append((MESSAGE, fields))  # noqa: N803
    logger = logging.getLogger(log.NAME)
    saved = logger.handlers[:], logger.level, logger.propagate
    logger.handlers[:], logger.propagate = [handler], False
    logger.setLevel(logging.INFO)

    async def until_ready_then_stop() -> None:
        def on_event(session, event):
            if event is Event.VERIFIED:
                task.cancel()

        session = Session(
            load_settings(),
            RuntimeDir.discover(),
            None,
            name="journal",
            mode=Mode.DAEMON_REQUESTED,
            on_event=on_event,
        )
        task = asyncio.current_task()
        try:
            await run_steps(session.steps())
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(until_ready_then_stop())
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    ((message, fields),) = [(m, f) for m, f in sent if "is ready" in m]
    assert fields["SESSION"] == "journal" and fields["STATE"] == "ready"
    assert message == f"display {fields['DISPLAY']} is ready (X server pid {fields['SERVER_PID']})."
    assert fields["SYSLOG_IDENTIFIER"] == "xsupervise" and fields["PRIORITY"] == "6"


# -- the units ---------------------------------------------------------------------------------

UNITS = Path(__file__).parent.parent / "systemd"


def _installed_units(target: Path) -> list[Path]:
    """The shipped units, with ExecStart pointing at this installation (as the README's
    install step does), so that systemd-analyze can check the command exists."""
    executable = shutil.which("xsupervise") or str(Path(sys.executable).parent / "xsupervise")
    assert os.access(executable, os.X_OK), executable
    copies = []
    for unit in sorted(UNITS.rglob("xsupervise*")):
        copy = target / unit.relative_to(UNITS)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(unit.read_text().replace("/opt/xsupervise/bin/xsupervise", executable))
        copies.append(copy)
    return copies


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_units_verify_cleanly(tmp_path: Path):
    copies = _installed_units(tmp_path / "units")
    names = {str(copy.relative_to(tmp_path / "units")) for copy in copies}
    assert names == {
        "xsupervise.service",
        "xsupervise.socket",
        "xsupervise@.service",
        "user/xsupervise.service",
        "user/xsupervise.socket",
        "user/xsupervise@.service",
    }
    for scope, directory in (
        ("--system", tmp_path / "units"),
        ("--user", tmp_path / "units" / "user"),
    ):
        # A template is checked through an instance; systemd-analyze loads it from its dir.
        targets = [
            str(directory / name)
            for name in ("xsupervise.service", "xsupervise.socket", "xsupervise@99.service")
        ]
        runtime = tmp_path / f"run{scope}"
        runtime.mkdir(mode=0o700)
        result = subprocess.run(
            ["systemd-analyze", scope, "verify", *targets],
            text=True,
            capture_output=True,
            timeout=60,
            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)},
        )
        assert (result.returncode, result.stderr) == (0, ""), result.stderr


def test_exactly_one_unit_listens_on_each_address():
    listeners: dict[str, list[str]] = {}
    for unit in UNITS.rglob("xsupervise*"):
        scope = "user" if unit.parent.name == "user" else "system"
        for line in unit.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip().startswith("Listen"):
                listeners.setdefault(f"{scope}:{value.strip()}", []).append(unit.name)
    assert listeners == {
        "system:/run/xsupervise/control.sock": ["xsupervise.socket"],
        "user:%t/xsupervise/control.sock": ["xsupervise.socket"],
    }
    for service in ("xsupervise.service", "xsupervise@.service"):
        for directory in (UNITS, UNITS / "user"):
            text = (directory / service).read_text()
            assert "Type=notify" in text and "Listen" not in text
            assert ("serve" if "@" not in service else "start :%i") in text
        # The daemon always gets its socket from xsupervise.socket: started alone it would
        # bind the path itself, and the socket unit started later would take it over.
        for directory in (UNITS, UNITS / "user"):
            unit = _unit_keys(directory / "xsupervise.service")
            assert "xsupervise.socket" in unit["Requires"].split()
            assert "xsupervise.socket" in unit["After"].split()
            # A spent restart budget (exit 7) must end the unit, not loop past its start timeout.
            template = _unit_keys(directory / "xsupervise@.service")
            assert {"--no-wait", "--relaunched"} <= set(template["ExecStart"].split())
            assert template["RestartPreventExitStatus"].split() == ["2", "7"]
            assert unit["RestartPreventExitStatus"] == "2"


def _unit_keys(path: Path) -> dict[str, str]:
    keys = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            keys[key.strip()] = value.strip()
    return keys


def test_a_client_waits_for_room_in_a_full_listen_queue_until_its_timeout(tmp_path: Path):
    # On a unix socket a non-blocking connect fails with EAGAIN at once when the daemon is a
    # few accepts behind; the CLI then said "cannot connect" to a daemon that was only busy.
    path = str(tmp_path / "control.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(path)
        busy.listen(0)
        queued = fill_listen_queue(path)
        outcome: list[object] = []

        def connect() -> None:
            try:
                outcome.append(Client(path, timeout=30).connect())
            except DaemonUnavailable as exc:
                outcome.append(exc)

        waiter = threading.Thread(target=connect)
        waiter.start()
        waiter.join(0.25)  # one that gives up does so at once (EAGAIN), in milliseconds
        assert waiter.is_alive(), f"it gave up at once: {outcome}"
        busy.accept()[0].close()  # room for one more
        waiter.join(30)
        assert isinstance(outcome[0], Client)
        outcome[0].close()
        with pytest.raises(DaemonUnavailable, match=r"did not accept a connection within 0.2 s"):
            Client(path, timeout=0.2).connect()
        for client in queued:
            client.close()
