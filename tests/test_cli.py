"""The xsupervise command, run as a real process against a real Xvfb (fakes for faults)."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import (
    XSUPERVISE,
    fake_server,
    free_display_number,
    read_line,
    requires_xvfb,
    start_cli,
    wait_gone,
)
from xsupervise.cli.main import main
from xsupervise.host.sockets import bound_abstract_displays


def announced(process: subprocess.Popen) -> dict[str, str]:
    lines = [read_line(process.stdout), read_line(process.stdout)]
    return dict(line.strip().split("=", 1) for line in lines)


def xdpyinfo_ok(env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["xdpyinfo"], env={**os.environ, **env}, capture_output=True, timeout=30
        ).returncode
        == 0
    )


@requires_xvfb
def test_start_auto_serves_until_sigterm_then_exits_0(runtime_dir: Path):
    with start_cli("start", ":auto") as process:
        _serve_until_sigterm(process, runtime_dir)


def _serve_until_sigterm(process: subprocess.Popen, runtime_dir: Path) -> None:
    env = announced(process)
    assert env["DISPLAY"].startswith(":")
    assert xdpyinfo_ok(env)
    assert not xdpyinfo_ok({"DISPLAY": env["DISPLAY"], "XAUTHORITY": "/dev/null"})
    listing = json.loads(
        subprocess.run([*XSUPERVISE, "list", "--json"], capture_output=True, check=True).stdout
    )
    assert [(entry["display"], entry["state"], entry["supervisor_pid"]) for entry in listing] == [
        (env["DISPLAY"], "ready", process.pid)
    ]
    server_pid = listing[0]["server_pid"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    assert process.stderr.read() == b""
    assert not psutil.pid_exists(server_pid)
    assert not os.path.exists(env["XAUTHORITY"])
    assert int(env["DISPLAY"][1:]) not in bound_abstract_displays()


@requires_xvfb
def test_start_explicit_number_json_displayfd_and_stop():
    number = free_display_number()
    read_fd, write_fd = os.pipe()
    with start_cli(
        "start", f":{number}", "--json", "--displayfd", str(write_fd), pass_fds=(write_fd,)
    ) as process:
        os.close(write_fd)
        _stop_by_number(process, number, read_fd)


def _stop_by_number(process: subprocess.Popen, number: int, read_fd: int) -> None:
    try:
        facts = json.loads(read_line(process.stdout))
        assert os.read(read_fd, 16) == f"{number}\n".encode()
        assert os.read(read_fd, 16) == b""  # written once, then closed, like an X server does
    finally:
        os.close(read_fd)
    assert facts["display"] == f":{number}" and facts["number"] == number
    assert facts["supervisor_pid"] == process.pid
    assert facts["screen"] == "1280x1024x24" and "X.Org" in facts["vendor"]
    stopped = subprocess.run([*XSUPERVISE, "stop", f":{number}"], capture_output=True, text=True)
    assert stopped.returncode == 0, stopped.stderr
    assert f":{number}: stopped (supervisor pid {process.pid})" in stopped.stdout
    assert process.wait(timeout=30) == 0
    assert not psutil.pid_exists(facts["server_pid"])


def test_stop_of_unknown_display_exits_6(capsys):
    assert main(["stop", ":987"]) == 6
    assert "no session of ours runs display :987" in capsys.readouterr().err


@requires_xvfb
def test_run_passes_exit_status_and_display_through():
    result = subprocess.run(
        [
            *XSUPERVISE,
            "run",
            "--",
            "sh",
            "-c",
            'xdpyinfo >/dev/null && echo "$DISPLAY $XAUTHORITY"; exit 7',
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 7, result.stderr
    display, xauthority = result.stdout.split()
    assert display.startswith(":") and xauthority.endswith(".xauth")
    assert not os.path.exists(xauthority)  # torn down before we returned


@requires_xvfb
def test_run_reports_128_plus_signal_and_missing_commands():
    killed = subprocess.run([*XSUPERVISE, "run", "--", "sh", "-c", "kill -KILL $$"], timeout=60)
    assert killed.returncode == 128 + signal.SIGKILL
    missing = subprocess.run(
        [*XSUPERVISE, "run", "--", "no-such-command-xyz"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 127
    assert "'no-such-command-xyz' was not found" in missing.stderr


@requires_xvfb
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_run_forwards_stop_signals_to_the_command(signum: int):
    catcher = (
        "import signal, sys\n"
        f"signal.signal({int(signum)}, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
    )
    with start_cli("run", "--", sys.executable, "-c", catcher) as process:
        assert read_line(process.stdout) == "ready\n"
        process.send_signal(signum)
        assert process.wait(timeout=30) == 42


@requires_xvfb
def test_sigkilled_supervisor_takes_its_x_server_along(runtime_dir: Path):
    with start_cli("start", "--json") as process:
        facts = json.loads(read_line(process.stdout))
        process.kill()
    # PR_SET_PDEATHSIG: the server dies with its supervisor, orphaned to us (see conftest).
    assert wait_gone(facts["server_pid"], timeout=1.0)
    # SIGKILL left the socket file and our records; the next start clears what is ours.
    subprocess.run([*XSUPERVISE, "run", "--", "true"], check=True, timeout=60)
    assert list((runtime_dir / "sessions").iterdir()) == []
    assert not os.path.exists(f"/tmp/.X11-unix/X{facts['number']}")


@requires_xvfb
def test_exit_with_parent_tears_down_cleanly_when_the_parent_is_sigkilled(runtime_dir: Path):
    # The parent is a shell, as jupyter-server-proxy would be a Jupyter server: it dies by
    # SIGKILL, and its xsupervise child (orphaned to us, see conftest) must stop on its own.
    parent = subprocess.Popen(
        [
            "sh",
            "-c",
            '"$@" & wait',
            "sh",
            *XSUPERVISE,
            "start",
            "--json",
            "--exit-with-parent",
            "--",
            "sleep",
            "300",
        ],
        stdout=subprocess.PIPE,
        bufsize=0,
    )
    with parent:
        facts = json.loads(read_line(parent.stdout))
        parent.kill()
    pidfd = os.pidfd_open(facts["supervisor_pid"])
    try:
        assert select.select([pidfd], [], [], 10.0)[0], "the supervisor outlived its parent"
    finally:
        os.close(pidfd)
    _, status = os.waitpid(facts["supervisor_pid"], 0)  # ours to reap: we are the subreaper
    # SIGTERM went to COMMAND (sleep), which died of it: 128 + 15, after a full teardown.
    assert os.waitstatus_to_exitcode(status) == 128 + signal.SIGTERM
    assert list((runtime_dir / "sessions").iterdir()) == []
    assert not os.path.exists(f"/tmp/.X11-unix/X{facts['number']}")


def test_exit_with_parent_starts_nothing_if_the_parent_is_already_gone(tmp_path: Path):
    # The launcher said who it is (--parent-pid); we are not its child any more: it died
    # between spawning us and our asking to be told, so no signal would ever come.
    report = tmp_path / "report"
    gone = subprocess.Popen(["true"])
    gone.wait()
    result = subprocess.run(
        [
            *XSUPERVISE,
            "start",
            "--exit-with-parent",
            "--parent-pid",
            str(gone.pid),
            "--server",
            fake_server("slow=0"),
            "--",
            "sleep",
            "300",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "FAKE_X_REPORT": str(report)},
    )
    assert result.returncode == 128 + signal.SIGTERM
    assert f"parent pid {gone.pid} exited before we started" in result.stderr
    assert not report.exists()  # no X server was spawned


@requires_xvfb
def test_what_command_leaves_running_is_stopped_too(tmp_path: Path):
    # COMMAND starts a background child and exits: the child is orphaned, adopted by the
    # supervisor (a subreaper), and stopped with the display instead of outliving it.
    pidfile = tmp_path / "orphan"
    result = subprocess.run(
        [*XSUPERVISE, "run", "--", "sh", "-c", f"sleep 300 & echo $! > {pidfile}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    orphan = int(pidfile.read_text())
    assert not psutil.pid_exists(orphan)
    assert (
        f"COMMAND left 1 process(es) running (pid {orphan} sleep); stopped them." in result.stderr
    )


@requires_xvfb
def test_an_orphan_that_ends_while_the_display_runs_is_reaped_at_once(tmp_path: Path):
    # The supervisor is a subreaper: an orphan it adopts (here: COMMAND's grandchild, whose
    # parent exits at once) and that then ends is its child to reap. Left as a zombie, one a
    # restart (a window manager's helper killed with its group) would pile up for the
    # session's life. Only the running ones are stopped at the end.
    fifo = tmp_path / "orphan"
    os.mkfifo(fifo)
    script = f'( sh -c "echo \\$\\$ > {fifo}" & ); exec sleep 300'
    with start_cli("start", "--json", "--", "sh", "-c", script) as process:
        try:
            read_line(process.stdout)  # the display is ready
            fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as stream:
                orphan = int(read_line(stream))
            deadline = time.monotonic() + 10
            while psutil.pid_exists(orphan):  # a zombie still exists: nothing to wait on
                assert time.monotonic() < deadline, f"orphan {orphan} was not reaped"
                time.sleep(0.01)
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 128 + signal.SIGTERM


@requires_xvfb
def test_an_in_process_run_leaves_the_signal_handlers_as_it_found_them():
    # main() also runs inside other programs (and the tests): its SIGCHLD wakeup, like its
    # stop signals' handlers, must not outlive it, or their child's exit would write to
    # their wakeup fd.
    signals = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    before = {signum: signal.getsignal(signum) for signum in signals}
    assert main(["run", "--", "true"]) == 0
    assert {signum: signal.getsignal(signum) for signum in signals} == before


@requires_xvfb
def test_a_command_that_ignores_sigterm_gets_sigkill_after_the_grace():
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring TERM', flush=True); time.sleep(300)"
    )
    with start_cli("start", "--kill-grace", "0.5", "--", sys.executable, "-c", stubborn) as process:
        assert read_line(process.stdout).startswith("DISPLAY=")
        read_line(process.stdout)  # XAUTHORITY=
        assert read_line(process.stdout) == "ignoring TERM\n"
        process.send_signal(signal.SIGTERM)
        # Nobody sends a second signal: the supervisor itself escalates, then tears down.
        assert process.wait(timeout=15) == 128 + signal.SIGKILL
        assert b"sending SIGKILL" in process.stderr.read()


@requires_xvfb
def test_twenty_parallel_runs_get_distinct_working_displays():
    # Each command reports its display once it works, then holds it until we close its stdin,
    # so all twenty displays are up at the same time.
    hold = 'xdpyinfo >/dev/null && echo "$DISPLAY" && { read _; exit 0; }'
    processes = [
        subprocess.Popen(
            [*XSUPERVISE, "run", "--", "sh", "-c", hold],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        for _ in range(20)
    ]
    try:
        displays = [read_line(process.stdout, timeout=60).strip() for process in processes]
    finally:
        for process in processes:
            process.stdin.close()
    codes = [process.wait(timeout=60) for process in processes]
    errors = [process.stderr.read() for process in processes]
    for process in processes:
        process.stdout.close()
        process.stderr.close()
    assert codes == [0] * 20, errors
    assert len(set(displays)) == 20 and all(display.startswith(":") for display in displays)


def test_never_ready_server_via_environment_deadline_exits_4(monkeypatch, capsys):
    monkeypatch.setenv("XSUPERVISE_DISPLAYFD_TIMEOUT", "0.3")
    assert main(["start", "--server", fake_server("never")]) == 4
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("xsupervise: fake_x.py (pid ")
    assert "not ready within the 0.3 s deadline" in error
    assert "XSUPERVISE_DISPLAYFD_TIMEOUT" in error and "fake: never ready" in error


def test_failed_start_in_run_does_not_run_the_command(tmp_path: Path, capsys):
    marker = tmp_path / "ran"
    code = main(["run", "--server", fake_server("exit"), "--", "touch", str(marker)])
    assert code == 3
    assert not marker.exists()
    assert "fake: cannot open virtual screen" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    assert main(["start", ":nope"]) == 2
    assert "':auto' or ':N'" in capsys.readouterr().err
    assert main(["start", "--screen", "big"]) == 2
    assert "--screen='big' is not valid" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["run"])
    assert exit_info.value.code == 2


def test_help_teaches_examples_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["start", "--help"])
    text = capsys.readouterr().out
    for words in ("xsupervise start :auto", "XSUPERVISE_DISPLAYFD_TIMEOUT", "exit codes:", "128+N"):
        assert words in text


def test_every_subcommand_is_one_row_of_the_table(capsys):
    from xsupervise.cli.main import SUBCOMMANDS

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    rows = text.split("  SUBCOMMAND\n", 1)[1].split("\n\n", 1)[0].splitlines()
    names = [row.split()[0] for row in rows if row[4] != " "]  # not a wrapped help line
    assert names == list(SUBCOMMANDS)  # in the table's order, and nothing else
    for name, subcommand in SUBCOMMANDS.items():
        with pytest.raises(SystemExit) as help_exit:
            main([name, "--help"])
        assert help_exit.value.code == 0 and f"usage: xsupervise {name}" in capsys.readouterr().out
        assert callable(subcommand.handle)


def test_exit_codes_are_named_once_and_each_is_explained_in_the_help():
    from xsupervise.cli.parsers import EXIT_CODES
    from xsupervise.host import errors
    from xsupervise.host.errors import ExitCode

    assert errors.UsageError.exit_code is ExitCode.USAGE
    assert errors.EnvironmentProblem.exit_code is ExitCode.ENVIRONMENT
    assert errors.StartError.exit_code is ExitCode.START_FAILED
    assert errors.ReadyTimeout.exit_code is ExitCode.READY_TIMEOUT
    assert errors.NoSuchSession.exit_code is ExitCode.NO_SUCH_SESSION
    assert errors.SessionFailed.exit_code is ExitCode.SESSION_FAILED
    assert ExitCode.signalled(signal.SIGKILL) == 137
    documented = {
        int(word.rstrip(":"))
        for line in EXIT_CODES.splitlines()
        for word in line.split()
        if word.rstrip(":").isdigit()
    }
    # FAILURE (1) is for 'clean' (its own epilog says so) and unforeseen failures.
    assert {int(code) for code in ExitCode} - {ExitCode.FAILURE} <= documented


# systemd-python is an extra; "not installed" is simulated by a None entry in sys.modules,
# which makes every `import systemd...` raise ImportError, as in a venv without it.
WITHOUT_SYSTEMD = (
    "import sys; sys.modules['systemd'] = None; from xsupervise.cli.main import main; "
)


@requires_xvfb
def test_without_systemd_python_run_works_and_serve_under_systemd_exits_5(tmp_path: Path):
    ran = subprocess.run(
        [sys.executable, "-c", WITHOUT_SYSTEMD + "sys.exit(main(['run', '--', 'true']))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (ran.returncode, ran.stderr) == (0, "")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    for argv in (["serve", "--socket", str(tmp_path / "control.sock")], ["start", ":auto"]):
        refused = subprocess.run(
            [sys.executable, "-c", WITHOUT_SYSTEMD + f"sys.exit(main({argv!r}))"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
        assert refused.returncode == 5, refused.stderr
        assert refused.stderr.count("\n") == 1
        assert "NOTIFY_SOCKET is set" in refused.stderr
        assert "pip install 'xsupervise[systemd]'" in refused.stderr
    assert not (tmp_path / "control.sock").exists()  # refused before binding anything


def test_without_systemd_python_a_start_whose_stderr_is_the_journal_exits_5_in_one_line(
    tmp_path: Path,
):
    """Issue 19 (4): the refusal was logged through a JournalHandler that could not be
    imported, and ended in a ModuleNotFoundError traceback instead of its line."""
    shim = tmp_path / "shim"  # first on the path: `import systemd` fails, as without it
    shim.mkdir()
    (shim / "systemd.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'systemd'\", name='systemd')\n"
    )
    stderr_file = tmp_path / "stderr"
    with open(stderr_file, "w") as stderr:
        info = os.fstat(stderr.fileno())
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(shim), *sys.path]),
            "JOURNAL_STREAM": f"{info.st_dev}:{info.st_ino}",  # fd 2 is "the journal"
        }
        done = subprocess.run(
            [*XSUPERVISE, "start", ":auto"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            timeout=60,
            check=False,
        )
    line = stderr_file.read_text()
    assert (done.returncode, done.stdout, line.count("\n")) == (5, b"", 1), line
    assert line.startswith("xsupervise: running under systemd (stderr is the journal"), line
    assert "pip install 'xsupervise[systemd]'" in line


def test_inherited_listen_fds_of_another_process_do_not_need_systemd_python():
    # A socket-activated service's LISTEN_FDS reach whatever it runs; sd_listen_fds(3) says
    # they are ours only when LISTEN_PID is our pid.
    env = {**os.environ, "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    env.pop("NOTIFY_SOCKET", None)
    listed = subprocess.run(
        [sys.executable, "-c", WITHOUT_SYSTEMD + "sys.exit(main(['list']))"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert (listed.returncode, listed.stderr) == (0, "")


@pytest.mark.parametrize("path", ["{tmp}:/usr/bin:/bin", "", ":/usr/bin", ":", None])
def test_which_finds_what_shutil_finds(path, tmp_path, monkeypatch):
    """host.paths.which stands in for shutil.which on the start path (issue 22); an empty
    $PATH finds nothing, even in the current directory (found in review)."""
    import shutil

    from xsupervise.host.paths import which

    (tmp_path / "tool").write_text("#!/bin/sh\n")
    (tmp_path / "tool").chmod(0o755)
    (tmp_path / "plain").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "Xvfb").write_text("#!/bin/sh\n")
    (tmp_path / "Xvfb").chmod(0o755)
    monkeypatch.chdir(tmp_path)
    if path is None:
        monkeypatch.delenv("PATH")
    else:
        monkeypatch.setenv("PATH", path.format(tmp=tmp_path))
    names = ["tool", "plain", "folder", "sh", "Xvfb", "/bin/sh", f"{tmp_path}/tool", "none"]
    assert [which(name) for name in names] == [shutil.which(name) for name in names]


def test_help_fits_the_columns_asked_for():
    result = subprocess.run(
        [*XSUPERVISE, "run", "--help"],
        env={**os.environ, "COLUMNS": "50"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    wrapped = [line for line in result.stdout.splitlines() if line.startswith(("  -", " " * 8))]
    assert len(wrapped) > 20 and max(map(len, wrapped)) <= 50  # the options' help, wrapped
    assert any(len(line) > 40 for line in wrapped)  # to the width asked for


@pytest.mark.parametrize("environ", [{}, {"XSUPERVISE_SCREEN": "800x600x16"}])
def test_run_without_options_gets_what_the_parser_would_give(environ, monkeypatch):
    """`run -- COMMAND` skips argparse (issue 22): its arguments must be the parser's."""
    from xsupervise.cli import main

    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    plain = main._plain_run(["run"], ["xterm", "-e", "--", "x"])
    parsed = main._build_parser(["run"]).parse_args(["run"])
    parsed.cmd = ["xterm", "-e", "--", "x"]
    assert vars(plain) == vars(parsed)
    assert main._plain_run(["run", "-v"], ["xterm"]) is None  # an option: the parser
    assert main._plain_run(["run"], []) is None  # no COMMAND: the parser's usage error
    monkeypatch.setenv("XSUPERVISE_POOL", "default")
    assert main._plain_run(["run"], ["xterm"]) is None  # a lease: its errors need the parser
