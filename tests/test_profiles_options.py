"""What each profile adds beyond the matrix (issue 14): the raw command's argv, --screen refused
where it cannot be honoured, glx, `servers`, xephyr without a DISPLAY, xvnc's private endpoint,
xorg-dummy's files, xwayland's stop order."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

import xsupervise
from conftest import XSUPERVISE, read_line, requires_xvfb, start_cli, wait_gone
from xsupervise.launch.profiles import PROFILES
from xsupervise.launch.settings import load_settings


def needs(name: str) -> pytest.MarkDecorator:
    profile = PROFILES[name]
    missing = profile.binary() is None or (name == "xwayland" and not shutil.which("weston"))
    return pytest.mark.skipif(
        missing,
        reason=f"{profile.binaries[0]} is not installed (apt-get install {profile.package})",
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*XSUPERVISE, *args], capture_output=True, text=True, timeout=60, env=env)


@requires_xvfb
def test_a_raw_command_gets_only_displayfd_auth_and_nolisten(tmp_path: Path):
    with xsupervise.Display(server="Xvfb +extension RANDR") as display:
        assert display.facts.width == 1280  # Xvfb's own default: we added no -screen
        record = display._ready().record  # type: ignore[union-attr]
        argv = list(record.server_argv)
    assert argv[0] == "Xvfb" and argv[-2:] == ["+extension", "RANDR"]
    assert argv[1:-2] == ["-displayfd", argv[2], "-nolisten", "tcp", "-auth", argv[-3]]


def test_screen_glx_and_vnc_listen_are_refused_with_a_raw_command():
    for option in (["--screen", "800x600x24"], ["--glx", "off"], ["--vnc-listen", "127.0.0.1"]):
        done = cli("run", "--server", "Xvfb", *option, "--", "true")
        assert done.returncode == 2, done.stderr
        assert "needs a server profile, not the raw command 'Xvfb'" in done.stderr
        assert "use --server xvfb, or put it in the command" in done.stderr


@needs("xwayland")
def test_a_depth_xwayland_cannot_honour_is_refused(short_runtime: Path):
    done = cli("run", "--server", "xwayland", "--screen", "800x600x16", "--", "true")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "always 24 bits deep" in done.stderr


@needs("xvfb")
def test_glx_is_on_by_default_and_off_on_request():
    def extensions(*options: str) -> str:
        done = cli("run", *options, "--", "xdpyinfo", "-queryExtensions")
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "GLX" in extensions()
    assert "GLX" not in extensions("--glx", "off")


def test_servers_lists_every_profile_with_its_binary():
    done = cli("servers", "--json")
    assert done.returncode == 0, done.stderr
    rows = {row["profile"]: row for row in json.loads(done.stdout)}
    assert list(rows) == list(PROFILES)
    for name, row in rows.items():
        installed = PROFILES[name].binary() is not None
        if name == "xwayland":
            installed = installed and shutil.which("weston") is not None
        assert row["installed"] == installed
        if row["installed"] and (shutil.which("dpkg-query") or shutil.which("rpm")):
            assert row["version"], f"{name}: no version"  # -version, else its package's
    assert cli("servers").stdout.startswith("PROFILE")


@needs("xephyr")
def test_xephyr_without_a_display_is_one_clear_line():
    env = {key: value for key, value in os.environ.items() if key != "DISPLAY"}
    done = cli("run", "--server", "xephyr", "--", "true", env=env)
    assert done.returncode == 5
    assert done.stderr.count("\n") == 1 and "DISPLAY is not set" in done.stderr


def rfb_greeting(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    return sock.recv(12)


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    process = psutil.Process(pid)
    return [
        (conn.laddr.ip, conn.laddr.port)
        for conn in process.net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]


def outside_address() -> str | None:
    """An address of this machine that is not loopback, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


@needs("xvnc")
def test_xvnc_serves_vnc_on_a_private_unix_socket_only(short_runtime: Path):
    with start_cli("start", "--json", "--server", "xvnc") as process:
        facts = json.loads(read_line(process.stdout))
        path = facts["vnc"]["unix"]
        assert facts["vnc"] == {"unix": path} and path.startswith(str(short_runtime))
        assert os.stat(path).st_mode & 0o777 == 0o600
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(path)
            assert rfb_greeting(sock) == b"RFB 003.008\n"
        assert tcp_listeners(facts["server_pid"]) == []  # nothing on any network address
        listed = json.loads(cli("list", "--json").stdout)
        assert [entry["vnc"] for entry in listed] == [facts["vnc"]]
        status = json.loads(cli("status", "--json").stdout)
        assert [entry["vnc"] for entry in status] == [facts["vnc"]]
        assert f"vnc {path}" in cli("status").stdout  # the bare path, as VNC clients take it
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


@needs("xvnc")
def test_vnc_listen_on_loopback_is_not_reachable_from_outside(short_runtime: Path):
    with start_cli("start", "--json", "--server", "xvnc", "--vnc-listen", "127.0.0.1") as process:
        facts = json.loads(read_line(process.stdout))
        host, port = facts["vnc"]["host"], facts["vnc"]["port"]
        assert facts["vnc"] == {"host": "127.0.0.1", "port": port}
        assert tcp_listeners(facts["server_pid"]) == [("127.0.0.1", int(port))]
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            assert rfb_greeting(sock) == b"RFB 003.008\n"
        outside = outside_address()
        if outside is not None:
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection((outside, int(port)), timeout=10).close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "without authentication" in process.stderr.read().decode()


@needs("xvnc")
def test_a_taken_vnc_port_is_skipped_or_named(short_runtime: Path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = cli("run", "--server", "xvnc", "--vnc-listen", f"127.0.0.1:{port}", "--", "true")
        assert done.returncode == 5
        assert f"127.0.0.1:{port} cannot be used: taken by pid {os.getpid()}" in done.stderr
    with socket.socket() as holder:  # without a port: a taken one is skipped
        try:
            holder.bind(("127.0.0.1", 5900))
        except OSError as exc:
            assert exc.errno == errno.EADDRINUSE  # someone else's: skipped all the same
        holder.listen()
        settings = load_settings({"server": "xvnc", "vnc_listen": "127.0.0.1"})
        with xsupervise.Display(settings=settings) as display:
            assert display.vnc is not None and (display.vnc.host, display.vnc.port) != (
                "127.0.0.1",
                5900,
            )


@needs("xorg-dummy")
def test_xorg_dummy_keeps_its_config_and_log_in_the_session(short_runtime: Path):
    logs = set(Path("/var/log").glob("Xorg.*.log"))
    stamps = {path: path.stat().st_mtime for path in logs}
    with xsupervise.Display(server="xorg-dummy", screen="1366x768x16") as display:
        facts = display.facts
        assert (facts.width, facts.height, facts.depth) == (1366, 768, 16)
        directory = Path(display.xauthority[: -len(".xauth")] + ".d")
        assert sorted(path.name for path in directory.iterdir()) == ["Xorg.log", "xorg.conf"]
        assert 'Driver "dummy"' in (directory / "xorg.conf").read_text()
        assert "Virtual 1366 768" in (directory / "xorg.conf").read_text()
    assert not directory.exists()
    assert set(Path("/var/log").glob("Xorg.*.log")) == logs
    assert {path: path.stat().st_mtime for path in logs} == stamps


@needs("xorg-dummy")
def test_an_xorg_failure_quotes_its_real_cause(short_runtime: Path):
    done = cli("run", "--server", "xorg-dummy -modulepath /nonexistent", "--", "true")
    assert done.returncode == 3
    assert "Xorg said: Fatal server error: no screens found" in done.stderr, done.stderr
    assert "Please consult" not in done.stderr  # Xorg's closing boilerplate is not quoted


@needs("xwayland")
def test_xwayland_stops_before_its_compositor(short_runtime: Path):
    with start_cli("start", "--json", "--server", "xwayland") as process:
        facts = json.loads(read_line(process.stdout))
        # Our descendant (inside a PID namespace of its own, the supervisor's grandchild).
        (weston,) = [
            child
            for child in psutil.Process(process.pid).children(recursive=True)
            if child.name() == "weston"
        ]
        assert weston.name() == "weston"
        assert weston.environ()["XDG_RUNTIME_DIR"].startswith(str(short_runtime))
        server = psutil.Process(facts["server_pid"])
        assert server.environ()["WAYLAND_DISPLAY"] == "wayland-0"
        weston.suspend()  # a stopped weston cannot exit before Xwayland has
        process.send_signal(signal.SIGTERM)
        assert wait_gone(server.pid, 10)
        assert weston.is_running()  # Xwayland is gone; its compositor is stopped next
        weston.resume()
        assert process.wait(timeout=20) == 0
        assert wait_gone(weston.pid, 5)


def test_glx_and_vnc_listen_values():
    assert load_settings({"glx": "off"}, environ={}).glx is False
    assert load_settings({}, environ={"XSUPERVISE_GLX": "1"}).glx is True
    assert load_settings({}, environ={}).glx is True
    assert load_settings({"vnc_listen": "[::1]:5901"}, environ={}).vnc_listen == "[::1]:5901"
    for field, bad in (("glx", "maybe"), ("vnc_listen", "127.0.0.1:99999"), ("vnc_listen", ":1")):
        with pytest.raises(xsupervise.UsageError, match=f"--{field.replace('_', '-')}="):
            load_settings({field: bad}, environ={})


def test_a_missing_profile_binary_names_its_package():
    done = cli("run", "--server", "xvnc", "--", "true", env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 5
    assert done.stderr.count("\n") == 1
    assert "apt-get install tigervnc-standalone-server" in done.stderr


@needs("xorg-dummy")
@pytest.mark.root("runs xorg-dummy as uid 65534")
def test_xorg_dummy_runs_unprivileged(as_other_user: tuple[list[str], dict[str, str]]):
    prefix, env = as_other_user
    runtime = tempfile.mkdtemp(prefix="xs-", dir="/tmp")
    try:
        os.chown(runtime, 65534, 65534)
        done = subprocess.run(
            [
                *prefix,
                "-m",
                "xsupervise",
                "run",
                "--server",
                "xorg-dummy",
                "--screen",
                "800x600x24",
                "--",
                "xdpyinfo",
            ],
            env={**env, "XDG_RUNTIME_DIR": runtime, "HOME": runtime},
            capture_output=True,
            text=True,
            timeout=60,
        )
        # The Xorg binary itself: no Xorg.wrap console check, -config at an absolute path.
        assert done.returncode == 0, done.stderr
        assert "800x600 pixels" in done.stdout
        assert os.listdir(os.path.join(runtime, "xsupervise", "sessions")) == []
    finally:
        shutil.rmtree(runtime)


@needs("xvnc")
def test_the_daemon_reports_the_vnc_endpoint(short_runtime: Path):
    from test_serve import Daemon, Notifications

    notifications = Notifications(short_runtime.parent / "notify.sock")
    daemon = Daemon(short_runtime.parent, notifications)
    try:
        notifications.until("READY")
        with daemon.client() as client:
            session = client.start(":auto", name="vnc", server="xvnc")
            assert session["vnc"]["unix"].startswith(str(short_runtime))
            assert session["vnc"] == {"unix": session["vnc"]["unix"]}
            assert [entry["vnc"] for entry in client.status("vnc")] == [session["vnc"]]
            assert [entry["vnc"] for entry in client.list()] == [session["vnc"]]
            client.stop(name="vnc")
    finally:
        status = daemon.stop()
        notifications.close()
        assert status == 0, daemon.output()


@needs("xvnc")
def test_start_prints_the_vnc_endpoint_beside_display(short_runtime: Path):
    with start_cli("start", "--server", "xvnc") as process:
        lines = [read_line(process.stdout) for _ in range(3)]
        assert lines[0].startswith("DISPLAY=:") and lines[1].startswith("XAUTHORITY=")
        assert lines[2].startswith(f"VNC={short_runtime}")  # the bare path: what clients take
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0


# vncdotool's script, beside our interpreter (a venv not on PATH) or on PATH.
VNCDO = shutil.which(
    "vncdo", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
)
needs_vncdo = pytest.mark.skipif(
    VNCDO is None, reason="vncdotool is not installed (pip install vncdotool)"
)


@needs("xvnc")
@needs_vncdo
@pytest.mark.parametrize("listen", [None, "127.0.0.1"], ids=["unix", "tcp"])
def test_a_real_vnc_client_takes_the_endpoint_as_reported(
    short_runtime: Path, tmp_path: Path, listen: str | None
):
    """Issue 19 (7): vncdotool took neither `unix:PATH` nor `HOST:PORT`. str(display.vnc) is
    what it takes; the JSON form is structured ({"unix": PATH} or {"host", "port"})."""
    from PIL import Image

    from xsupervise.launch.vnc_endpoint import VncEndpoint

    settings = load_settings({"server": "xvnc", "screen": "320x200x24", "vnc_listen": listen})
    with xsupervise.Display(settings=settings) as display:
        assert display.vnc is not None
        expected = (
            {"unix": display.vnc.unix}
            if listen is None
            else {"host": "127.0.0.1", "port": display.vnc.port}
        )
        assert display.vnc.to_json() == expected
        assert VncEndpoint.from_json(expected) == display.vnc
        env = {**os.environ, **display.env}
        subprocess.run(["xsetroot", "-solid", "red"], env=env, check=True, timeout=30)
        shot = tmp_path / "vnc.png"
        done = subprocess.run(
            [str(VNCDO), "-s", str(display.vnc), "capture", str(shot)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    with Image.open(shot) as image:
        assert image.size == (320, 200)
        assert image.convert("RGB").getcolors(1) == [(320 * 200, (255, 0, 0))]
