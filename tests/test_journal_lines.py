"""Under systemd (a simulated JOURNAL_STREAM, as tests/test_serve.py's journal test does), the
lines a relaunched template instance ends with go through the journal handler: a failed start
at PRIORITY warning, the FAILED line at err, both with the session's fields, never prefixed
twice; before exiting FAILED it says `STATUS=FAILED: ...`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from xsupervise.host.paths import RuntimeDir
from xsupervise.session.session import Ledger

# Runs the CLI with systemd-python's journal sender replaced by one that appends to a file.
WRAPPER = """
import json, sys
import systemd.journal as journal
def send(MESSAGE, **fields):
    with open(sys.argv[1], "a") as out:
        out.write(json.dumps({"MESSAGE": MESSAGE, **fields}, default=str) + "\\n")
journal.JournalHandler.__init__.__defaults__ = (0, send)
from xsupervise.cli.main import main
sys.exit(main(sys.argv[2:]))
"""
NAME = "journal-broken"


def test_a_broken_template_instance_reports_through_the_journal(tmp_path: Path):
    runtime = tmp_path / "rt"
    runtime.mkdir(mode=0o700)
    entries_file, stderr_file = tmp_path / "journal.jsonl", tmp_path / "stderr"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    env = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
        "XSUPERVISE_SERVER": "/bin/false",
        "XSUPERVISE_START_LIMIT_BURST": "2",
        "XSUPERVISE_BACKOFF_INITIAL": "0.05",
        "XSUPERVISE_BACKOFF_MAX": "0.1",
    }
    argv = ["start", ":auto", "--name", NAME, "--no-wait", "--relaunched"]  # as xsupervise@
    codes = []
    try:
        with open(stderr_file, "w") as stderr:
            info = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{info.st_dev}:{info.st_ino}"
            for _ in range(6):  # as systemd's Restart= would
                run = subprocess.run(
                    [sys.executable, "-c", WRAPPER, str(entries_file), *argv],
                    env=env,
                    stderr=stderr,
                    stdout=subprocess.DEVNULL,
                    timeout=30,
                )
                codes.append(run.returncode)
                if run.returncode == 7:
                    break
        statuses = []
        while True:
            try:
                statuses += [
                    line.removeprefix("STATUS=")
                    for line in notify.recv(65536).decode().splitlines()
                    if line.startswith("STATUS=")
                ]
            except BlockingIOError:
                break
    finally:
        notify.close()
        os.environ["XDG_RUNTIME_DIR"], saved = str(runtime), os.environ.get("XDG_RUNTIME_DIR")
        try:
            Ledger(RuntimeDir.discover(), NAME).reset()
        finally:
            if saved is None:
                del os.environ["XDG_RUNTIME_DIR"]
            else:
                os.environ["XDG_RUNTIME_DIR"] = saved
    assert codes == [3, 3, 3, 7], codes  # burst 2: the third failure makes it FAILED
    assert stderr_file.read_text() == "", stderr_file.read_text()  # all went to the journal
    entries = [json.loads(line) for line in entries_file.read_text().splitlines()]
    for entry in entries:
        assert not entry["MESSAGE"].startswith("xsupervise:"), entry
        assert entry["SYSLOG_IDENTIFIER"] == "xsupervise"
    # The failed start's own line (a later run may also say "backing off ... Last failure:
    # <that line>" when it comes before the backoff is over: a warning of its own).
    starts = [
        e
        for e in entries
        if e["MESSAGE"].startswith("false (pid ") and "exited with status 1 before" in e["MESSAGE"]
    ]
    assert {e["PRIORITY"] for e in starts} == {"4"}, starts
    failed = [e for e in entries if e["MESSAGE"].startswith(f"session {NAME} is FAILED")]
    assert len(starts) == 3 and {e["SESSION"] for e in starts} == {NAME}, entries
    assert [(e["PRIORITY"], e["SESSION"], e["STATE"]) for e in failed] == [("3", NAME, "failed")]
    assert statuses[-1].startswith(f"FAILED: session {NAME} is FAILED"), statuses
