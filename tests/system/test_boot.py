"""The pytest wrapper of tests/system/boot-test: the units under a real systemd as PID 1
(issue 15, item 7)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def _cannot_boot() -> str | None:
    if os.environ.get("XSUPERVISE_BOOT_TEST") != "1":
        # Minutes on a cold cache, and it needs Debian's archive: asked for, not by default.
        return (
            "the systemd boot test runs only with XSUPERVISE_BOOT_TEST=1 (tests/system/boot-test)"
        )
    if os.geteuid() != 0:
        return "needs root to boot a container"
    for tool, package in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install {package})"
    return None


@pytest.mark.realtime
@pytest.mark.skipif(_cannot_boot() is not None, reason=str(_cannot_boot()))
def test_units_under_systemd_as_pid1():
    """tests/system/boot-test: a debootstrapped Debian 12 booted by systemd-nspawn."""
    result = subprocess.run(
        [str(HERE / "boot-test")],
        check=False,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    print(result.stdout, result.stderr, sep="\n")
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert result.returncode == 0 and not failed, "\n".join(failed) or result.stderr[-2000:]
