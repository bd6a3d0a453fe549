"""The package's shape (issue 21): subpackages by concept, in layers, with no import cycles.

Every import of one of our modules counts, wherever it is: at module level, inside a
function (a lazy import is still a dependency), or under ``TYPE_CHECKING``. A module may
import its own layer and the layers below; never one above. A cycle of any kind fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "xsupervise"
# Lowest first. The public modules at the top (client.py is the daemon's client, so it sits
# with the daemon; Display and the rest of the library API use it).
LAYERS: list[set[str]] = [
    {"host"},  # what this machine tells us: errors, logs, paths, processes by pidfd, sockets
    {"launch"},  # one X server, from its settings to its teardown
    {"session", "media"},  # a display's life; what you see of a display
    {"daemon", "client"},  # `serve`, its control socket, pools and leases; its client
    {"api"},  # Display, AsyncDisplay, the pytest plugin's child
    {"cli", "jupyter", "pytest_plugin", "__init__", "__main__"},  # the ways in
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts)
        found[name.removesuffix(".__init__") if name != "__init__" else "__init__"] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Our modules that module ``name`` imports, anywhere in it."""
    is_package = path.name == "__init__.py"
    here = [] if name == "__init__" else name.split(".")
    if not is_package:
        here = here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "xsupervise":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:
                candidate = ".".join([*target, alias.name])
                found.add(candidate if candidate in MODULES else ".".join(target) or "__init__")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "xsupervise":
                    found.add(".".join(parts[1:]) or "__init__")
    found.discard(name)
    return {module for module in found if module in MODULES}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str:
    return module.split(".")[0]


def test_every_module_is_in_a_layer() -> None:
    assert {_layer(module) for module in MODULES} <= set(RANK)


def test_at_most_twelve_entries_in_the_package() -> None:
    entries = [p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(entries)


def test_no_import_reaches_up_a_layer() -> None:
    upward = [
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if RANK[_layer(target)] > RANK[_layer(module)]
    ]
    assert not upward, "imports from a higher layer: " + "; ".join(sorted(upward))


def test_no_import_cycle_of_any_kind() -> None:
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


RUN_AND_LIST_MODULES = """
import os, sys
from xsupervise.cli.main import console
exit_now = os._exit
def report(code):
    print(" ".join(sorted(sys.modules)), flush=True)
    exit_now(code)
os._exit = report
sys.argv = ["xsupervise", "run", "--", "true"]
console()
"""


def test_run_loads_only_what_it_runs() -> None:
    """Issue 22: `xsupervise run -- true` loads no daemon, pool, media, API, pytest or
    other-profile code (each costs start-up time on every run)."""
    import shutil
    import subprocess
    import sys

    import pytest

    if shutil.which("Xvfb") is None:
        pytest.skip("needs Xvfb")
    result = subprocess.run(
        [sys.executable, "-c", RUN_AND_LIST_MODULES], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    ours = {name for name in result.stdout.split() if name.startswith("xsupervise.")}
    unwanted = ("xsupervise.daemon", "xsupervise.media", "xsupervise.api", "xsupervise.client")
    unwanted += ("xsupervise.pytest_plugin", "xsupervise.jupyter")
    unwanted += tuple(
        f"xsupervise.launch.{name}"
        for name in ("vnc", "compositor", "xorg_conf", "wm", "recording", "ffmpeg", "check")
    )
    loaded = [name for name in ours for no in unwanted if name == no or name.startswith(no + ".")]
    assert loaded == []
    # shutil imports its compression modules (2 ms): argparse's width and `which` do without.
    # `run -- COMMAND` with no option of ours needs no parser (argparse: ~4 ms).
    assert {"shutil", "argparse"}.isdisjoint(result.stdout.split())
    assert "xsupervise.launch.launcher" in ours  # it did run
    # Issue 21: at most 20 of our modules, each of which runs (docs/architecture.md names
    # them). A new one here is a new cost on every run: it should be a choice, made here.
    assert ours | {"xsupervise"} == RUN_MODULES, "run -- true loaded a different set of modules"
    assert len(RUN_MODULES) <= 20


RUN_MODULES = {
    "xsupervise",
    *("xsupervise.cli", "xsupervise.cli.main", "xsupervise.cli.foreground"),
    *("xsupervise.session", "xsupervise.session.session"),
    *("xsupervise.launch", "xsupervise.launch.settings", "xsupervise.launch.profiles"),
    *("xsupervise.launch.launcher", "xsupervise.launch.x11", "xsupervise.launch.server"),
    *("xsupervise.launch.process", "xsupervise.launch.containment"),
    *("xsupervise.host", "xsupervise.host.errors", "xsupervise.host.log"),
    *("xsupervise.host.paths", "xsupervise.host.processes", "xsupervise.host.sockets"),
}


def test_the_entry_point_alone_loads_no_launch_path() -> None:
    """The console script's module is every command's way in (and `run --pool`'s fast path,
    which is meant to cost little more than the interpreter): the session and the launch path
    are imported by `start`/`run` only, when they run."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import sys, xsupervise.cli.main; print(' '.join(sys.modules))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    ours = sorted(name for name in result.stdout.split() if name.startswith("xsupervise."))
    entry = ("xsupervise.cli", "xsupervise.cli.main")
    assert ours == [*entry, "xsupervise.host", "xsupervise.host.errors", "xsupervise.host.log"]
