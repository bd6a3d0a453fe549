"""Settings precedence (flag > environment > config file > default) and the runtime directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from xsupervise.host.errors import RuntimeDirError, UsageError
from xsupervise.host.paths import RuntimeDir
from xsupervise.launch.settings import Settings, load_settings


def write_config(home: Path, text: str) -> Path:
    path = home / "xsupervise" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_when_nothing_is_set():
    assert load_settings({}, environ={}) == Settings()
    assert Settings().displayfd_timeout <= 30


def test_flag_beats_environment_beats_file_beats_default(tmp_path: Path):
    write_config(tmp_path, 'displayfd_timeout = 7\nscreen = "800x600x16"\nkill_grace = 3\n')
    environ = {
        "XDG_CONFIG_HOME": str(tmp_path),
        "XSUPERVISE_DISPLAYFD_TIMEOUT": "5",
        "XSUPERVISE_SCREEN": "1024x768x24",
    }
    settings = load_settings({"displayfd_timeout": "2", "screen": None}, environ=environ)
    assert settings.displayfd_timeout == 2.0  # flag
    assert settings.screen == "1024x768x24"  # environment (the flag was not given)
    assert settings.kill_grace == 3.0  # file
    assert settings.server == ("xvfb",)  # default: the xvfb profile


def test_explicit_config_file_and_server_command_words(tmp_path: Path):
    path = tmp_path / "other.toml"
    path.write_text('server = ["Xvnc", "-SecurityTypes", "None"]\n')
    settings = load_settings({}, environ={"XSUPERVISE_CONFIG": str(path)})
    assert settings.server == ("Xvnc", "-SecurityTypes", "None")
    assert load_settings({"server": "Xephyr -ac"}, environ={}).server == ("Xephyr", "-ac")


@pytest.mark.parametrize(
    "environ, words",
    [
        ({"XSUPERVISE_KILL_GRACE": "soon"}, "XSUPERVISE_KILL_GRACE='soon' is not valid"),
        ({"XSUPERVISE_DISPLAYFD_TIMEOUT": "0"}, "XSUPERVISE_DISPLAYFD_TIMEOUT='0' is not valid"),
        (
            {"XSUPERVISE_CONFIG": "/nonexistent.toml"},
            "XSUPERVISE_CONFIG=/nonexistent.toml is not a file",
        ),
    ],
)
def test_bad_values_name_their_origin(environ, words):
    with pytest.raises(UsageError) as failure:
        load_settings({}, environ=environ)
    assert words in str(failure.value)


def test_broken_config_file_is_named(tmp_path: Path):
    path = write_config(tmp_path, "displayfd_timeout = = 3\n")
    with pytest.raises(UsageError) as failure:
        load_settings({}, environ={"XDG_CONFIG_HOME": str(tmp_path)})
    assert f"cannot read config file {path}" in str(failure.value)


def test_runtime_dir_under_a_valid_xdg_runtime_dir(tmp_path: Path):
    base = tmp_path / "rt"
    base.mkdir(mode=0o700)
    runtime = RuntimeDir.discover(environ={"XDG_RUNTIME_DIR": str(base)}, warn=pytest.fail)
    assert runtime.path == str(base / "xsupervise")
    assert stat.S_IMODE(os.lstat(runtime.path).st_mode) == 0o700
    assert stat.S_IMODE(os.lstat(runtime.sessions).st_mode) == 0o700


@pytest.mark.root("root falls back to the system runtime directory")
@pytest.mark.parametrize("problem", ["relative", "open-mode", "symlink", "missing"])
def test_unfit_xdg_runtime_dir_falls_back_with_a_warning(tmp_path: Path, problem: str, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    value = {"relative": "some/dir", "missing": str(tmp_path / "absent")}.get(problem)
    if problem == "open-mode":
        real.chmod(0o755)
        value = str(real)
    if problem == "symlink":
        (tmp_path / "link").symlink_to(real)
        value = str(tmp_path / "link")
    warnings = []
    fallback = tmp_path / "system"
    monkeypatch.setattr("xsupervise.host.paths.SYSTEM_RUNTIME_DIR", str(fallback))  # we are root
    runtime = RuntimeDir.discover(environ={"XDG_RUNTIME_DIR": value}, warn=warnings.append)
    assert runtime.path == str(fallback)
    assert len(warnings) == 1 and f"XDG_RUNTIME_DIR={value}" in warnings[0]
    assert not (real / "xsupervise").exists()


@pytest.mark.root("root's login shell rule")
@pytest.mark.skipif(os.getuid() != 0, reason="root's rule")
def test_root_login_shell_shares_the_system_services_directory(tmp_path: Path, monkeypatch):
    # pam_systemd sets /run/user/0 in a root login shell; the system service and the
    # xsupervise@ units run without it. Both must see the same sessions and restart budgets.
    system, login = tmp_path / "system", tmp_path / "user-0"
    login.mkdir(mode=0o700)
    monkeypatch.setattr("xsupervise.host.paths.SYSTEM_RUNTIME_DIR", str(system))
    monkeypatch.setattr("xsupervise.host.paths.ROOT_LOGIN_RUNTIME_DIR", str(login))
    runtime = RuntimeDir.discover(environ={"XDG_RUNTIME_DIR": f"{login}/"}, warn=pytest.fail)
    assert runtime.path == str(system) and not (login / "xsupervise").exists()
    # Units of root's own user manager (systemctl --user as root) keep their %t.
    unit = RuntimeDir.discover(
        environ={"XDG_RUNTIME_DIR": str(login), "INVOCATION_ID": "0" * 32}, warn=pytest.fail
    )
    assert unit.path == str(login / "xsupervise")


@pytest.mark.root("it chowns to uid 65534")
def test_runtime_dir_owned_by_someone_else_is_refused(tmp_path: Path):
    planted = tmp_path / "planted"
    planted.mkdir(mode=0o700)
    os.chown(planted, 65534, 65534)
    with pytest.raises(RuntimeDirError) as failure:
        RuntimeDir.create(str(planted))
    assert "belongs to uid 65534" in str(failure.value)


def test_symlink_planted_as_runtime_dir_is_refused(tmp_path: Path):
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    (tmp_path / "xsupervise").symlink_to(target)
    with pytest.raises(RuntimeDirError) as failure:
        RuntimeDir.create(str(tmp_path / "xsupervise"))
    assert "is not a directory (or is a symlink)" in str(failure.value)


@pytest.mark.root("it runs as uid 65534")
@pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv"
)
def test_unprivileged_user_without_xdg_runtime_dir_gets_a_private_home_directory(as_other_user):
    # Outside pytest's own 0700 tmp tree, which the unprivileged user cannot traverse.
    home = Path(tempfile.mkdtemp(prefix="xsupervise-home-"))
    home.chmod(0o755)
    os.chown(home, 65534, 65534)
    try:
        _check_fallback_as_nobody(home, *as_other_user)
    finally:
        shutil.rmtree(home)


def _check_fallback_as_nobody(home: Path, prefix: list[str], staged: dict[str, str]) -> None:
    code = (
        "from xsupervise.host.paths import RuntimeDir; import os, stat; r = RuntimeDir.discover(); "
        "print(r.path, oct(stat.S_IMODE(os.lstat(r.path).st_mode)), os.lstat(r.path).st_uid)"
    )
    result = subprocess.run(
        [*prefix, "-c", code], env={**staged, "HOME": str(home)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    path, mode, uid = result.stdout.split()
    assert path.startswith(str(home / ".cache" / "xsupervise" / "run-"))
    assert (mode, uid) == ("0o700", "65534")
    assert "XDG_RUNTIME_DIR is not set; using" in result.stderr


def test_every_setting_is_typed_for_type_checkers():
    from xsupervise.launch.settings import FIELDS, RestartPolicy

    # The restart policy's six are declared once, on RestartPolicy, which Settings is.
    assert [*Settings.__annotations__, *RestartPolicy.__annotations__] == list(FIELDS)


@pytest.mark.parametrize("table", ["", "[session.main]\n"])
@pytest.mark.parametrize(
    "command", [["run", "--", "true"], ["start", ":auto"], ["status"], ["serve"]]
)
def test_every_command_refuses_an_unknown_key_as_serve_does(tmp_path: Path, command, table):
    # A typo ("scren") must never fall back to the default geometry, whichever command reads it.
    config = write_config(tmp_path, f'{table}scren = "800x600x24"\n')
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(tmp_path)}
    env.pop("XSUPERVISE_CONFIG", None)
    result = subprocess.run(
        [sys.executable, "-m", "xsupervise", *command, "--socket", str(tmp_path / "c.sock")]
        if command == ["serve"]
        else [sys.executable, "-m", "xsupervise", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    where = f"[session.main] in {config}" if table else str(config)
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [f"xsupervise: unknown key(s) scren in {where}; the known ones are " + KNOWN[bool(table)]],
    )


KNOWN = {
    False: "server, screen, glx, vnc_listen, displayfd_timeout, kill_grace, wm, record, "
    "record_fps, backoff_initial, backoff_max, reset_after, start_limit_burst, "
    "start_limit_interval, failed_cooldown, [session.NAME] and [pool.NAME] tables.",
    True: "display, server, screen, glx, vnc_listen, displayfd_timeout, kill_grace, wm, record, "
    "record_fps, backoff_initial, backoff_max, reset_after, start_limit_burst, "
    "start_limit_interval, failed_cooldown.",
}
