"""The public surface (issue 10): what xsupervise, xsupervise.client and xsupervise.jupyter
export, and nothing else public. A change here is an API change: say so in CHANGELOG.md."""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import xsupervise
from xsupervise import client, jupyter

PACKAGE_API = [
    "Display",
    "AsyncDisplay",
    "XSuperviseError",
    "UsageError",
    "EnvironmentProblem",
    "ServerNotFound",
    "RuntimeDirError",
    "StartError",
    "ServerExited",
    "BadDisplayFd",
    "NotServing",
    "ReadyTimeout",
    "NoSuchSession",
    "SessionFailed",
    "ScreenshotError",
    "VncEndpoint",
]
CLIENT_API = [
    "Client",
    "ControlError",
    "DaemonUnavailable",
    "Lease",
    "default_socket_path",
    "running_daemon",
]
JUPYTER_API = [
    "server_process",
    "session_name",
    "proxy_timeout",
    "APP_START_SECONDS",
    "setup_desktop",
]
PUBLIC_MODULES = {"__main__", "client", "jupyter", "pytest_plugin"}


def test_package_exports_exactly_its_api() -> None:
    assert xsupervise.__all__ == PACKAGE_API
    for name in PACKAGE_API:
        assert getattr(xsupervise, name) is not None, name
    assert set(PACKAGE_API) <= set(dir(xsupervise))  # the lazily imported ones are listed too


def test_every_exported_error_is_an_xsupervise_error() -> None:
    errors = [
        name for name in PACKAGE_API if name not in ("Display", "AsyncDisplay", "VncEndpoint")
    ]
    for name in errors:
        assert issubclass(getattr(xsupervise, name), xsupervise.XSuperviseError), name


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Displya'"):
        _ = xsupervise.Displya


def test_client_exports_exactly_its_api() -> None:
    assert client.__all__ == CLIENT_API
    for name in CLIENT_API:
        assert getattr(client, name) is not None, name


def test_jupyter_exports_exactly_its_api() -> None:
    assert jupyter.__all__ == JUPYTER_API
    for name in JUPYTER_API:
        assert getattr(jupyter, name) is not None, name


def test_every_other_module_is_private() -> None:
    found = {info.name for info in pkgutil.walk_packages(xsupervise.__path__)}
    assert found >= PUBLIC_MODULES
    # Private: the subpackages (docs/architecture.md maps them) and all they hold.
    packages = {info.name for info in pkgutil.iter_modules(xsupervise.__path__) if info.ispkg}
    public = sorted(name for name in found - PUBLIC_MODULES if name.split(".")[0] not in packages)
    assert public == [], f"modules outside the public API must live in a subpackage: {public}"
    for name in found - {"__main__"}:  # and every one of them imports
        importlib.import_module(f"xsupervise.{name}")


def test_one_version_source() -> None:
    # pyproject.toml reads xsupervise.__version__ (tool.setuptools.dynamic).
    assert xsupervise.__version__ == importlib.metadata.version("xsupervise")


def test_import_and_version_stay_cheap() -> None:
    """`import xsupervise` is part of every `xsupervise run`: reading the version must not pull
    in importlib.metadata, nor the package typing, logging or the Display machinery."""
    root = Path(xsupervise.__file__).parent.parent
    heavy = ("importlib.metadata", "typing", "logging", "xsupervise.api.display")
    code = (
        "import sys, xsupervise; xsupervise.__version__; "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    # -S: no site-packages .pth hooks, only the checkout, so that what we see is ours.
    done = subprocess.run(
        [sys.executable, "-S", "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(root)},
        check=True,
    )
    assert done.stdout.split() == []
