"""The docs checker: every command and example shown in README.md and docs/*.md works.

- Shell blocks (```sh, and the `$ ` lines of ```console): every command that runs xsupervise
  is run for real in the test's isolated runtime directory when that is safe here (see
  ``how_to_check``), and otherwise parsed by the real CLI parser; every unit a systemctl or
  journalctl command names, and every systemd/ file a command copies, exists. The units'
  own ExecStart= lines are parsed too.
- Python blocks are executed (with Xvfb), except those whose first line says
  "# Compiled only" (they need a running daemon): those are compiled.
- TOML blocks parse; config examples use only known settings.
- Relative links (and their #anchors) resolve; the README's exit codes table matches the
  exception classes; docs/settings.md matches the settings; docs/architecture.md's module
  map names every module.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from conftest import XSUPERVISE, read_line, requires_xvfb, start_cli
from xsupervise.cli.main import _build_parser  # the CLI's parser builder
from xsupervise.host import errors as _errors
from xsupervise.launch.profiles import DEFAULT_SCREEN
from xsupervise.launch.settings import FIELDS, env_name, flag_name

ROOT = Path(__file__).parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```", re.M | re.S)
SAFE_COMMANDS = {"true", "xdpyinfo"}  # what a documented `run`/`start -- COMMAND` may run here


def blocks(*languages: str) -> list[tuple[str, str]]:
    """(file:line, dedented text) of every fenced block in one of ``languages``."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            if match.group(2) in languages:
                line = text.count("\n", 0, match.start()) + 1
                found.append((f"{path.relative_to(ROOT)}:{line}", textwrap.dedent(match.group(3))))
    return found


def shell_commands() -> list[tuple[str, dict[str, str], list[str]]]:
    """(where, environment assignments, words) of every simple command in shell blocks."""
    commands = []
    for where, text in blocks("sh", "console"):
        console = any(line.startswith("$ ") for line in text.splitlines())
        for line in text.replace("\\\n", " ").splitlines():
            if console and not line.startswith("$ "):
                continue  # output
            lexer = shlex.shlex(line.removeprefix("$ "), posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            words: list[str] = []
            for word in [*lexer, ";"]:
                if word not in ("&&", "||", "|", ";", "&"):
                    words.append(word)
                    continue
                env = {}
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    key, _, value = words.pop(0).partition("=")
                    env[key] = value
                if words:
                    commands.append((where, env, words))
                words = []
    return commands


def xsupervise_args(words: list[str]) -> list[str] | None:
    """The arguments, if ``words`` runs xsupervise (its script, or python -m xsupervise)."""
    if Path(words[0]).name == "xsupervise":
        return words[1:]
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "xsupervise"]:
        return words[3:]
    return None


def parse(args: list[str]) -> argparse.Namespace:
    """The real parser's reading of ``args`` (COMMAND after '--' is kept from it, as main does)."""
    own = args[: args.index("--")] if "--" in args else args
    try:
        return _build_parser(own).parse_args(own)
    except SystemExit as error:
        pytest.fail(f"the CLI parser refuses {shlex.join(args)!r} (exit {error.code})")


def how_to_check(args: list[str]) -> str:
    """'help', 'run' (to completion), 'foreground' (until ready, then SIGTERM) or 'parse'."""
    if "--help" in args or "-h" in args:
        return "help"
    options = parse(args)
    command = args[args.index("--") + 1 :] if "--" in args else []
    if getattr(options, "socket", None):
        return "parse"  # a daemon's socket
    if options.command in ("list", "reset") or (options.command == "status" and not options.target):
        return "run"
    if options.command == "clean" and options.dry_run:
        return "run"
    # A fresh display (not a fixed number that may be taken here) of the default X server:
    fresh = options.command == "run" or (
        options.command == "start" and options.display == ":auto" and not options.detach
    )
    if fresh and not options.server:
        if not command:
            return "foreground"
        if command[0] in SAFE_COMMANDS:
            return "run"
    # serve, stop, clean, status of a target, --detach, a fixed display number, another
    # server or a COMMAND that is not ours to run here.
    return "parse"


def unit_exists(name: str, user: bool) -> bool:
    """Whether systemd/ (systemd/user/ for ``systemctl --user``) has the unit, or its template."""
    name = name if name.endswith((".service", ".socket")) else name + ".service"
    template = re.sub(r"@[^.]+\.", "@.", name)
    return (ROOT / "systemd" / ("user" if user else "") / template).is_file()


COMMANDS = shell_commands()


@pytest.mark.parametrize(
    "where,env,words",
    COMMANDS,
    ids=[f"{where} {shlex.join(words)[:50]}" for where, _, words in COMMANDS],
)
def test_shown_command(where: str, env: dict[str, str], words: list[str]) -> None:
    for word in words:  # files a command installs or copies from this checkout
        if word.startswith("systemd/"):
            assert (ROOT / word).is_file(), f"{where}: {word} does not exist"
    if words[0] in ("systemctl", "journalctl"):
        for unit in (word for word in words[1:] if word.startswith("xsupervise")):
            assert unit_exists(unit, "--user" in words), f"{where}: no unit {unit} in systemd/"
    args = xsupervise_args(words)
    if args is None:
        return  # apt-get, pip, nc...: not ours to run here
    kind = how_to_check(args)
    if kind in ("help", "run", "foreground") and shutil.which("Xvfb") is None:
        pytest.skip("Xvfb is not installed")
    if kind in ("help", "run"):
        done = subprocess.run(
            [*XSUPERVISE, *args],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        # clean --dry-run exits 1 when stale entries (of other users) remain: not a failure.
        allowed = {0, 1} if "clean" in args else {0}
        assert done.returncode in allowed, f"{where}: {shlex.join(words)}: {done.stderr}"
        if kind == "help":
            assert done.stdout.startswith("usage: xsupervise")
    elif kind == "foreground":
        with start_cli(*args, env={**os.environ, **env}) as process:
            assert read_line(process.stdout).startswith("DISPLAY=:")
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=30)
            assert process.returncode == 0, f"{where}: {shlex.join(words)}: {stderr!r}"


def test_every_kind_of_check_is_used() -> None:
    """The checker cannot quietly fall back to parsing everything."""
    kinds = {
        how_to_check(args)
        for _, _, words in COMMANDS
        if (args := xsupervise_args(words)) is not None
    }
    assert kinds == {"help", "run", "foreground", "parse"}


@pytest.mark.parametrize(
    "unit",
    sorted((ROOT / "systemd").rglob("*.service")),
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_units_exec_start_parses(unit: Path) -> None:
    lines = [
        line.removeprefix("ExecStart=")
        for line in unit.read_text().splitlines()
        if line.startswith("ExecStart=")
    ]
    assert lines
    for line in lines:
        assert parse(xsupervise_args(shlex.split(line.replace("%i", "99"))) or [])


UNITS = sorted((ROOT / "systemd").rglob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=lambda path: str(path.relative_to(ROOT)))
def test_units_run_no_program_a_minimal_system_lacks(unit: Path, tmp_path: Path) -> None:
    """Issue 19 (5): a minimal system has no /bin/kill (procps). Every Exec*= line runs an
    absolute path; a reload sends SIGHUP to $MAINPID with the shell's builtin kill, run here
    as systemd runs it (split into words, MAINPID in the environment) with an empty PATH."""
    execs = [
        line.partition("=")[::2]
        for line in unit.read_text().splitlines()
        if line.startswith("Exec") and "=" in line
    ]
    for key, command in execs:
        program = shlex.split(command.lstrip("-@:+!"))[0]
        assert program.startswith("/") and os.path.basename(program) != "kill", (key, command)
    for _, command in (pair for pair in execs if pair[0] == "ExecReload"):
        waiter = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP}); "
                "print('ready', flush=True); print(signal.sigwait({signal.SIGHUP}).name)",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert waiter.stdout is not None
            assert waiter.stdout.readline() == "ready\n"
            reload = subprocess.run(
                shlex.split(command),
                env={"PATH": str(tmp_path), "MAINPID": str(waiter.pid)},
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
            assert (reload.returncode, reload.stderr) == (0, ""), command
            assert waiter.stdout.readline() == "SIGHUP\n"
        finally:
            waiter.kill()
            waiter.wait()
            waiter.stdout.close()  # type: ignore[union-attr]


@requires_xvfb
@pytest.mark.parametrize("where,code", blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_example(
    where: str, code: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, short_runtime: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # what an example writes (a screenshot) stays in the test's dir
    # Scripts of the packages installed beside us (vncdotool's vncdo), as in an activated venv.
    monkeypatch.setenv(
        "PATH", os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    )
    compiled = compile(code, where, "exec")
    if code.startswith("# Compiled only"):
        return  # the first line says why (a daemon must be running)
    exec(compiled, {"__name__": "__docs__"})


@pytest.mark.parametrize("where,text", blocks("toml"), ids=[w for w, _ in blocks("toml")])
def test_toml_example(where: str, text: str) -> None:
    data = tomllib.loads(text)
    if "project" in data:
        return  # a pyproject.toml excerpt
    if "tool" in data:  # the pytest plugin's ini keys, as pyproject.toml holds them
        ini = data["tool"]["pytest"]["ini_options"]
        assert set(ini) <= {
            "xdisplay",
            "xdisplay_screen",
            "xdisplay_server",
            "xdisplay_screenshots",
        }
        return
    sessions = data.pop("session", {})
    pools = data.pop("pool", {})
    assert set(data) <= set(FIELDS), f"{where}: unknown settings"
    for table in sessions.values():
        assert set(table) <= {*FIELDS, "display"}, f"{where}: unknown session keys"
    for table in pools.values():
        assert set(table) <= {*FIELDS, "size"}, f"{where}: unknown pool keys"


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_resolve() -> None:
    others = ("bench/README.md", "CHANGELOG.md", "examples/xinfo/README.md")
    pages = [*DOCS, *(ROOT / path for path in others)]
    checked = 0
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path) if path else page
            assert resolved.exists(), f"{page.relative_to(ROOT)}: broken link {target}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", FENCE.sub("", resolved.read_text()), re.M)
                assert anchor in {slug(heading) for heading in headings}, (
                    f"{page.relative_to(ROOT)}: no heading for #{anchor} in {path or page.name}"
                )
            checked += 1
    assert checked > 20


def table(path: Path, after: str) -> list[list[str]]:
    """The cells of the first Markdown table after the line ``after``."""
    lines = path.read_text().split(after + "\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines[start:]))
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_exit_codes_table_matches_the_exception_classes() -> None:
    rows = table(ROOT / "README.md", "## Exit codes")
    named = {cells[1].strip("`"): cells[0] for cells in rows if cells[1]}
    assert len(named) >= 7
    for name, code in named.items():
        assert getattr(_errors, name).exit_code == int(code), f"{name}: README says {code}"
    listed = {cells[0] for cells in rows}
    errors = [getattr(_errors, name) for name in _errors.__all__]
    for error in errors:
        if isinstance(error, type) and issubclass(error, _errors.XSuperviseError):
            assert str(int(error.exit_code)) in listed, f"{error.__name__}'s code is missing"


def test_settings_table_matches_the_settings() -> None:
    rows = table(ROOT / "docs" / "settings.md", "# Settings")
    assert [cells[0].strip("`") for cells in rows] == list(FIELDS)
    for key, flag, env, default, _ in rows:
        key = key.strip("`")
        assert (flag, env) == (f"`{flag_name(key)}`", f"`{env_name(key)}`"), key
        value = FIELDS[key]
        if key == "screen":  # None in the code: each profile's default, one for all
            assert value is None
            value = DEFAULT_SCREEN
        if value == () or value is None:  # a setting that is off unless given (wm)
            assert default == "none", f"{key}: docs say {default}, code: none"
            continue
        shown = (
            str(value).lower()
            if isinstance(value, bool)
            else " ".join(value)
            if isinstance(value, tuple)
            else f"{value:g}"
            if isinstance(value, float)
            else str(value)
        )
        assert default.split("`")[1] == shown, f"{key}: docs say {default}, code {shown}"


def test_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    mapped = set(re.findall(r"^  ([\w/]+\.py) ", text, re.M))
    package = ROOT / "xsupervise"
    modules = {
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "__init__.py" or path.parent == package
    }
    missing = sorted(modules - mapped)
    assert not missing, f"add a line per module to docs/architecture.md's module map: {missing}"
