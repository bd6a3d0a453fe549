"""The example launcher (examples/xinfo) under a real Jupyter server with jupyter-server-proxy.

These tests need the test extras (jupyter_server, jupyter-server-proxy) and the example
package installed: ``pip install -e '.[test]' && pip install ./examples/xinfo`` (the README's
test command).
"""

from __future__ import annotations

import getpass
import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

import xsupervise.jupyter
from conftest import XSUPERVISE, fake_server, requires_xvfb, wait_gone

pytest.importorskip("jupyter_server", reason="needs the test extras: pip install -e '.[test]'")
pytest.importorskip(
    "jupyter_server_proxy", reason="needs the test extras: pip install -e '.[test]'"
)

TOKEN = "xsupervise-test-token"
BASE_URL = "/user/tester/"
SESSION_NAME = f"jupyter-{getpass.getuser()}-xinfo"


@pytest.fixture(autouse=True)
def example_installed():
    if importlib.util.find_spec("xsupervise_xinfo") is None:
        pytest.fail("the example launcher is not installed: pip install ./examples/xinfo")


class JupyterServer:
    """``jupyter server`` on loopback, with its own config, data and runtime directories."""

    def __init__(
        self, tmp_path: Path, environment: dict[str, str] | None = None, debug: bool = False
    ):
        env = dict(os.environ, **(environment or {}))
        for name in ("config", "data", "runtime"):
            env[f"JUPYTER_{name.upper()}_DIR"] = str(tmp_path / f"jupyter-{name}")
        self.log: list[str] = []
        self._running = threading.Event()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--allow-root",
                "--no-browser",
                "--ServerApp.ip=127.0.0.1",
                "--ServerApp.port=0",
                f"--IdentityProvider.token={TOKEN}",
                f"--ServerApp.base_url={BASE_URL}",
                f"--ServerApp.root_dir={tmp_path}",
                *(["--debug"] if debug else []),
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        # Read its log all along (a full pipe would block it); the event is the line that
        # follows "is running at" and gives the URL, with the port it bound.
        self.url = ""
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._running.wait(60) or not self._accepts_connections(timeout=30):
            self.stop(signal.SIGKILL)
            raise AssertionError("jupyter server did not start:\n" + "".join(self.log[-30:]))

    def _accepts_connections(self, timeout: float) -> bool:
        # Jupyter logs its URL before its event loop binds the port, and says nothing after:
        # there is no event to wait for, so try to connect until it works (bounded).
        host, port = self.url.removeprefix("http://").split(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                return True
            except ConnectionRefusedError:
                time.sleep(0.02)
        return False

    def _read_log(self) -> None:
        for line in self.process.stderr:
            self.log.append(line)
            match = re.search(r"(http://127\.0\.0\.1:\d+)" + re.escape(BASE_URL), line)
            if match and not self.url:
                self.url = match.group(1)
                self._running.set()

    def get(self, path: str, timeout: float) -> tuple[int, bytes]:
        request = urllib.request.Request(
            self.url + BASE_URL + path, headers={"Authorization": f"token {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.read()

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self, signum: int = signal.SIGTERM) -> list[psutil.Process]:
        """Stop Jupyter with ``signum``; return the processes it had started (now orphans)."""
        family = self.descendants() if self.process.poll() is None else []
        if self.process.poll() is None:
            self.process.send_signal(signum)
        self.process.wait(timeout=30)
        self._reader.join(timeout=10)
        self.process.stderr.close()
        return family


def supervisors_of(jupyter: JupyterServer) -> list[psutil.Process]:
    return [p for p in jupyter.descendants() if p.cmdline()[1:3] == ["-m", "xsupervise"]]


@requires_xvfb
def test_the_example_answers_through_jupyter_with_the_real_displays_facts(
    tmp_path: Path, runtime_dir: Path
):
    jupyter = JupyterServer(tmp_path)
    try:
        # The launcher's own path: jupyter-server-proxy starts it on first request.
        status, body = jupyter.get("xinfo/", timeout=120)
        assert status == 200, body
        facts = json.loads(body)
        # The display xsupervise verified and records, and the one the app's X client asked.
        listing = json.loads(
            subprocess.run(
                [*XSUPERVISE, "list", "--json"], check=True, capture_output=True, text=True
            ).stdout
        )
        [record] = [r for r in listing if r["name"] == SESSION_NAME]
        assert facts["display"] == record["display"]
        assert (facts["width"], facts["height"], facts["depth"]) == (1024, 768, 24)
        assert facts["vendor"] == "The X.Org Foundation" and facts["screens"] == 1
        [supervisor] = supervisors_of(jupyter)
        assert (
            supervisor.ppid() == jupyter.process.pid and supervisor.pid == record["supervisor_pid"]
        )
        server = psutil.Process(record["server_pid"])
        # Its child, or inside a PID namespace its init's (see docs/containment.md).
        assert supervisor in server.parents() and Path(server.exe()).name == "Xvfb"

        # The generic /proxy/<port>/ path reaches the same app, on the port jupyter-server-proxy
        # gave it (read off the app's own command line).
        [app] = [p for p in supervisor.children() if "xsupervise_xinfo.app" in p.cmdline()]
        port = app.cmdline()[app.cmdline().index("--port") + 1]
        status, body = jupyter.get(f"proxy/{port}/", timeout=30)
        assert status == 200, body
        assert json.loads(body) == facts

    finally:
        # The harshest end: Jupyter SIGKILLed. --exit-with-parent still stops all cleanly.
        family = jupyter.stop(signal.SIGKILL)
    assert {supervisor.pid, server.pid, app.pid} <= {process.pid for process in family}
    for process in family:
        assert wait_gone(process.pid, timeout=15), f"{process.pid} outlived Jupyter"
    assert list((runtime_dir / "sessions").iterdir()) == []


STORM_SECONDS = 3.0
STORM_LAUNCHER = "storm"
# The example's app, declared in Jupyter's config by the same helper, with a short allowance
# for the app's own start: the proxy's timeout (backoff_max + X deadline + app_start) is then
# 0.3 + 0.3 + 0.6 s instead of the example's 30 s and more, so the window holds two or more.
STORM_CONFIG = f"""
import sys
import xsupervise.jupyter

c.ServerProxy.servers = {{
    {STORM_LAUNCHER!r}: xsupervise.jupyter.server_process(
        {STORM_LAUNCHER!r},
        [sys.executable, "-m", "xsupervise_xinfo.app", "--port", "{{port}}", "--display",
         "{{display}}"],
        app_start=0.6),
}}
"""


@pytest.mark.realtime
def test_a_never_ready_x_server_cannot_storm_through_jupyter(tmp_path: Path, runtime_dir: Path):
    """Requests for 3 s to a launcher whose X server never answers.

    jupyter-server-proxy relaunches its child at once whenever it exits non-zero, and SIGKILLs
    it at its readiness timeout; each request after that starts it again. With a 0.3 s X
    deadline and backoffs of at most 0.3 s, a relauncher without a budget would spawn an X
    server at least every 0.6 s: 5 or more in the window, against a bound of 3.
    xsupervise spends one restart budget per launcher: at most start_limit_burst + 1 X spawns,
    then FAILED. (The same minute with the default policy: test_session_machine.py.)
    """
    report = tmp_path / "x-spawns"
    environment = {
        "XSUPERVISE_SERVER": fake_server("never"),
        "FAKE_X_REPORT": str(report),
        "XSUPERVISE_DISPLAYFD_TIMEOUT": "0.3",
        "XSUPERVISE_BACKOFF_INITIAL": "0.1",
        # A short backoff cap also makes the proxy's timeout short, so that its
        # SIGKILL-and-relaunch happens within the window too.
        "XSUPERVISE_BACKOFF_MAX": "0.3",
        "XSUPERVISE_START_LIMIT_BURST": "2",
    }
    config = tmp_path / "jupyter-config"
    config.mkdir()
    (config / "jupyter_server_config.py").write_text(STORM_CONFIG)
    jupyter = JupyterServer(tmp_path, environment, debug=True)
    statuses: list[int | str] = []
    try:
        end = time.monotonic() + STORM_SECONDS
        while (left := end - time.monotonic()) > 0:
            try:
                statuses.append(jupyter.get(f"{STORM_LAUNCHER}/", timeout=min(3.0, left))[0])
            except (TimeoutError, urllib.error.URLError):
                statuses.append("timeout")
    finally:
        family = jupyter.stop(signal.SIGTERM)

    spawns = sum(1 for line in report.read_text().splitlines() if line.startswith("pid="))
    launches = sum(f"Started {STORM_LAUNCHER}" in line for line in jupyter.log)
    budget = int(environment["XSUPERVISE_START_LIMIT_BURST"]) + 1  # then FAILED for 300 s
    assert 1 <= spawns <= budget, (
        f"{spawns} X servers spawned in {STORM_SECONDS:g} s (budget {budget})"
    )
    # The proxy did relaunch its child many times, and did give up on one at its timeout.
    assert launches >= 3, f"jupyter-server-proxy launched xsupervise only {launches} times"
    gave_up = sum(f"could not start {STORM_LAUNCHER} in time" in line for line in jupyter.log)
    print(
        f"{len(statuses)} requests, {launches} launches of xsupervise, {gave_up} proxy "
        f"timeouts, {spawns} X servers spawned"
    )
    assert gave_up >= 1, "the proxy never reached its timeout: the window did not cover it"
    for process in family:
        assert wait_gone(process.pid, timeout=15), f"{process.pid} outlived Jupyter"
    assert list((runtime_dir / "sessions").iterdir()) == []


# -- jupyter-server-proxy's relauncher (simpervisor) against failures after the display --------

# A short backoff (0.17 s, doubling) in a short window: the same bounds as the default
# policy's 1 s in 10 s (test_session_machine.py checks those in simulated time).
RELAUNCH_SECONDS = 2.0
RELAUNCH_BACKOFF = "0.17"


def relaunch_for(commands: list[list[str]], seconds: float) -> None:
    """Run each command as jupyter-server-proxy does, side by side on one event loop:
    simpervisor relaunches it at once each time it exits non-zero, while the proxy waits
    ``seconds`` for an app that never answers."""
    import asyncio

    from simpervisor import SupervisedProcess

    async def never_ready(_process) -> bool:
        return False

    async def one(number: int, command: list[str]) -> None:
        process = SupervisedProcess(
            f"launcher{number}",
            *command,
            ready_func=never_ready,
            ready_timeout=seconds,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        await process.start()
        assert not await process.ready()
        if process.running:
            await process.terminate()  # SIGTERM, as Jupyter's own shutdown does

    async def main() -> None:
        await asyncio.gather(*(one(n, command) for n, command in enumerate(commands)))

    asyncio.run(main())


@pytest.mark.realtime
@requires_xvfb
def test_an_app_that_crashes_and_a_missing_x_server_spend_the_budget(
    tmp_path: Path, runtime_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """Two launchers under simpervisor at once (they share nothing but the clock, so their
    2-second windows run side by side):

    - an app that exits 1 as soon as it starts (port taken, ImportError...): each relaunch
      would start a fresh X server at once; with --relaunched, its failures back off;
    - an X server that is not installed: each relaunch would fail at once, for ever.
    """
    report = tmp_path / "x-spawns"
    crash = xsupervise.jupyter.server_process(
        "crash", ["sh", "-c", "exit 1"], server=fake_server("slow=0").split()
    )  # a real Xvfb
    launches = tmp_path / "launches"
    wrapper = [
        "sh",
        "-c",
        f'echo launch >> {launches}; exec "$0" "$@"',
        sys.executable,
        "-m",
        "xsupervise",
    ]
    nox = xsupervise.jupyter.server_process(
        "nox", ["true"], server="/nonexistent/Xvfb", xsupervise=wrapper
    )
    monkeypatch.setenv("FAKE_X_REPORT", str(report))
    monkeypatch.setenv("XSUPERVISE_BACKOFF_INITIAL", RELAUNCH_BACKOFF)
    relaunch_for(
        [
            [arg.format(port=0, unix_socket="", base_url="/") for arg in spec["command"]]
            for spec in (crash, nox)
        ],
        RELAUNCH_SECONDS,
    )
    spawns = sum(1 for line in report.read_text().splitlines() if line.startswith("pid="))
    count = len(launches.read_text().splitlines())
    print(f"{spawns} X servers, {count} launches of xsupervise in {RELAUNCH_SECONDS:g} s")
    # Backoff after each failure: 0.17, 0.34, 0.68, 1.36, 2.72 s (times a jitter in [0.5, 1]):
    # a sixth start comes 2.64 s or more after the first, so at most 5 fit into 2 s; without
    # the budget it was over a hundred in 10 s.
    assert 2 <= spawns <= 5, f"{spawns} X servers in {RELAUNCH_SECONDS:g} s"
    assert 2 <= count <= 6, f"xsupervise was launched {count} times in {RELAUNCH_SECONDS:g} s"
    assert list((runtime_dir / "sessions").iterdir()) == []
