"""Settings: command-line flag > environment (XSUPERVISE_*) > config file > built-in default.

The config file is TOML, first found of ``$XSUPERVISE_CONFIG``, ``$XDG_CONFIG_HOME/xsupervise/
config.toml`` (pyxdg), ``/etc/xsupervise/config.toml``; keys are the fields below.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..host.errors import UsageError

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from collections.abc import Callable


ENV_PREFIX = "XSUPERVISE_"
SYSTEM_CONFIG = "/etc/xsupervise/config.toml"


# name -> default; parsers for text values are in _PARSERS below.
# The restart policy's numbers (see session/session.py for what it decides with them).
POLICY_DEFAULTS = {
    "backoff_initial": 1.0,
    "backoff_max": 60.0,
    "reset_after": 60.0,
    "start_limit_burst": 5,
    "start_limit_interval": 60.0,
    "failed_cooldown": 300.0,
}


class RestartPolicy:
    __slots__ = tuple(POLICY_DEFAULTS)
    backoff_initial: float
    backoff_max: float
    reset_after: float
    start_limit_burst: int
    start_limit_interval: float
    failed_cooldown: float

    def __init__(self, **values: float) -> None:
        for name, default in POLICY_DEFAULTS.items():
            setattr(self, name, values.get(name, default))

    def __repr__(self) -> str:
        return (
            "RestartPolicy(" + ", ".join(f"{n}={getattr(self, n)}" for n in POLICY_DEFAULTS) + ")"
        )

    def delay(self, failures_in_a_row: int, jitter: Callable[[], float] | None = None) -> float:
        """Seconds to wait before the next start after that many consecutive failures."""
        if failures_in_a_row <= 0:
            return 0.0
        if jitter is None:
            import random  # late: the CLI imports this module before it spawns the server

            jitter = random.random
        exponent = min(failures_in_a_row - 1, 32)  # 2**32 s is past any cap
        base = min(self.backoff_max, self.backoff_initial * 2.0**exponent)
        return base * (0.5 + 0.5 * jitter())


FIELDS: dict[str, object] = {
    # The X server: a profile name (see launch/profiles.py) or a raw command, with extra arguments.
    "server": ("xvfb",),
    # Screen geometry, WxHxD; None: the profile's default (1280x1024x24). Not for raw commands.
    "screen": None,
    # The GLX extension (OpenGL clients need it); False adds -extension GLX (faster start).
    "glx": True,
    # xvnc: also listen on this TCP ADDR[:PORT], unauthenticated (None: a private unix socket).
    "vnc_listen": None,
    # How long the server may take to write its display number and answer.
    "displayfd_timeout": 10.0,
    # How long a server may take to exit after SIGTERM before it gets SIGKILL.
    "kill_grace": 2.0,
    # A window manager started on the display once it is ready (see launch/wm.py); () for none.
    "wm": (),
    # A video of the display written to this file (see launch/recording.py); None for none.
    "record": None,
    # The recording's highest frame rate (it takes a frame only when the screen changed).
    "record_fps": 15.0,
    # The restart policy's settings (see session/session.py).
    **POLICY_DEFAULTS,
}


class Settings(RestartPolicy):
    """What a display session needs to know; every field has a documented default (FIELDS).
    It is a RestartPolicy too: the policy's six fields are declared there, once.

    (A plain class rather than a dataclass: importing dataclasses costs the CLI milliseconds.)
    """

    __slots__ = tuple(name for name in FIELDS if name not in POLICY_DEFAULTS)
    # (Annotations only, for type checkers: the slots above are the attributes.)
    server: tuple[str, ...]
    screen: str | None
    glx: bool
    vnc_listen: str | None
    displayfd_timeout: float
    kill_grace: float
    wm: tuple[str, ...]
    record: str | None
    record_fps: float

    def __init__(self, **values: object):
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise TypeError(f"unknown settings: {sorted(unknown)}")
        for name, default in FIELDS.items():
            setattr(self, name, values.get(name, default))

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in FIELDS)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Settings) and self._values() == other._values()

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in FIELDS)
        return f"Settings({fields})"

    def policy(self) -> RestartPolicy:

        return RestartPolicy(**{name: getattr(self, name) for name in POLICY_DEFAULTS})


# --- value parsers -------------------------------------------------------------------------------
# The settings' value parsers (see FIELDS).
#
# Parsers get text (environment) or any TOML value: float(), int() and iteration raise
# TypeError for a value of the wrong type, which load_settings turns into a UsageError.


def _positive_seconds(value: object) -> float:
    seconds = float(value)  # type: ignore[arg-type]
    if not 0 < seconds < 86400:
        raise ValueError("must be a number of seconds above 0")
    return seconds


def _command(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        import shlex  # only for a command given as text: not on every run's start path

        words = shlex.split(value)
    else:
        words = [str(word) for word in value]  # type: ignore[attr-defined]
    if not words:
        raise ValueError("must name a program")
    return tuple(words)


def _optional_command(value: object) -> tuple[str, ...]:
    """A command, or none: "" (or an empty list) turns it off."""
    return () if value in ("", [], ()) else _command(value)


def _screen(value: object) -> str:
    text = str(value)
    parts = text.split("x")
    if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
        raise ValueError("must look like WIDTHxHEIGHTxDEPTH, e.g. 1920x1080x24")
    return text


def _count(value: object) -> int:
    number: int = int(value)  # type: ignore[call-overload]
    if not 1 <= number <= 1000:
        raise ValueError("must be a whole number from 1 to 1000")
    return number


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ValueError("must be true or false (also on/off, yes/no, 1/0)")


def _listen(value: object) -> str:
    text = str(value).strip()
    split_listen(text)  # raises ValueError with the expected form
    return text


def _optional_path(value: object) -> str | None:
    """A file's path, made absolute where it is given (a daemon that receives it runs
    elsewhere), or none: "" turns it off."""
    if not isinstance(value, str):
        raise TypeError("must be a path")
    return os.path.abspath(value) if value else None


def _fps(value: object) -> float:
    rate = float(value)  # type: ignore[arg-type]
    if not 0 < rate <= 60:
        raise ValueError("must be a number of frames a second above 0, at most 60")
    return rate


def split_listen(listen: str) -> tuple[str, int | None]:
    """'ADDR', 'ADDR:PORT', '[V6]' or '[V6]:PORT' -> (address, port or None)."""
    host, port = listen, ""
    if listen.startswith("["):
        host, _, rest = listen[1:].partition("]")
        port = rest.removeprefix(":")
    elif listen.count(":") == 1:
        host, port = listen.split(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        raise ValueError("must look like ADDR or ADDR:PORT, e.g. 127.0.0.1:5901")
    return host, int(port) if port else None


# How to read each field from text (environment) or TOML values.
_PARSERS: dict[str, Callable[[object], object]] = {
    "server": _command,
    "screen": _screen,
    "glx": _bool,
    "vnc_listen": _listen,
    "displayfd_timeout": _positive_seconds,
    "kill_grace": _positive_seconds,
    "wm": _optional_command,
    "record": _optional_path,
    "record_fps": _fps,
    "backoff_initial": _positive_seconds,
    "backoff_max": _positive_seconds,
    "reset_after": _positive_seconds,
    "start_limit_burst": _count,
    "start_limit_interval": _positive_seconds,
    "failed_cooldown": _positive_seconds,
}


# The command-line spelling of a field, for error messages.
_FLAGS = {"displayfd_timeout": "--timeout"}


def flag_name(field: str) -> str:
    return _FLAGS.get(field, "--" + field.replace("_", "-"))


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def config_file(environ: Mapping[str, str] = os.environ) -> str | None:
    """The config file in force, or None. An explicit $XSUPERVISE_CONFIG must exist."""
    explicit = environ.get(ENV_PREFIX + "CONFIG")
    if explicit:
        if not os.path.isfile(explicit):
            raise UsageError(
                f"XSUPERVISE_CONFIG={explicit} is not a file; "
                "point it at a TOML config file or unset it."
            )
        return explicit
    from xdg.BaseDirectory import xdg_config_home  # pyxdg reads XDG_CONFIG_HOME at import

    home = environ.get("XDG_CONFIG_HOME") or xdg_config_home
    for candidate in (os.path.join(home, "xsupervise", "config.toml"), SYSTEM_CONFIG):
        if os.path.isfile(candidate):
            return candidate
    return None


def read_config_file(path: str) -> dict[str, object]:
    import tomllib  # only paid for when a config file exists

    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"cannot read config file {path}: {exc}; fix or remove it.") from exc


def load_settings(
    flags: Mapping[str, object] | None = None, environ: Mapping[str, str] = os.environ
) -> Settings:
    """Resolve every field: flags (None means 'not given') > environment > file > default."""
    flags = {key: value for key, value in (flags or {}).items() if value is not None}
    path = config_file(environ)
    from_file = read_config_file(path) if path else {}
    if path:
        check_keys(path, from_file)
    values: dict[str, object] = {}
    for field, parse in _PARSERS.items():
        if field in flags:
            raw, origin = flags[field], flag_name(field)
        elif env_name(field) in environ:
            raw, origin = environ[env_name(field)], env_name(field)
        elif field in from_file:
            raw, origin = from_file[field], f"{field} in {path}"
        else:
            continue
        try:
            values[field] = parse(raw)
        except (TypeError, ValueError, OverflowError) as exc:
            raise UsageError(f"{origin}={raw!r} is not valid: {exc}.") from None
    return Settings(**values)


def parse_display(request: str | int | None) -> int | None:
    """':auto'/'auto'/None -> None (the server chooses); ':5'/'5'/5 -> 5."""
    if request is None:
        return None
    if isinstance(request, int) and not isinstance(request, bool):
        text = str(request)
    else:
        text = str(request).removeprefix(":")
    if text == "auto":
        return None
    # Stricter than a client's DISPLAY (x11.display_number takes ':N.S' and 'unix:N'): a
    # display to start or stop is a number, and nothing is silently dropped from it.
    from .x11 import MAX_DISPLAY_DIGITS

    if text.isdigit() and len(text) <= MAX_DISPLAY_DIGITS:
        return int(text)
    raise UsageError(f"display {request!r} is not ':auto' or ':N' with N a number, e.g. ':99'.")


def default_session_name(number: int | None, server: tuple[str, ...]) -> str:
    """The restart-budget key when --name is not given: the display request, the server's
    program name and a checksum of its whole command, e.g. 'auto-xvfb-1c291ca3'."""
    import zlib

    request = "auto" if number is None else str(number)
    checksum = zlib.crc32("\0".join((request, *server)).encode()) & 0xFFFFFFFF
    return f"{request}-{os.path.basename(server[0])}-{checksum:08x}"


class SessionSpec:
    """One display session declared in the config file's ``[session.NAME]`` table."""

    __slots__ = ("name", "number", "settings")

    def __init__(self, name: str, number: int | None, settings: Settings):
        self.name = name
        self.number = number
        self.settings = settings

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SessionSpec) and (self.name, self.number, self.settings) == (
            other.name,
            other.number,
            other.settings,
        )

    def __repr__(self) -> str:
        return f"SessionSpec({self.name!r}, display={self.number}, {self.settings!r})"


SESSION_TABLE = "session"
POOL_TABLE = "pool"  # [pool.NAME]: read by daemon.pool_spec.load_pool_specs


def check_keys(path: str, data: Mapping[str, object]) -> None:
    """Refuse (exit 2) an unknown key, top-level or in a session table. load_settings calls
    it, so every command refuses a typo with serve's line: it must never become a default."""
    unknown = set(data) - set(_PARSERS) - {SESSION_TABLE, POOL_TABLE}
    if unknown:
        raise UsageError(
            f"unknown key(s) {', '.join(sorted(unknown))} in {path}; the known ones are "
            f"{', '.join(_PARSERS)}, [{SESSION_TABLE}.NAME] and [{POOL_TABLE}.NAME] tables."
        )
    for kind, own_key in ((SESSION_TABLE, "display"), (POOL_TABLE, "size")):
        tables = data.get(kind, {})
        if not isinstance(tables, dict):
            raise UsageError(f"'{kind}' in {path} must be tables: [{kind}.NAME].")
        for name, table in tables.items():
            where = f"[{kind}.{name}] in {path}"
            if not isinstance(table, dict):
                raise UsageError(f"{where} must be a table of settings.")
            unknown = set(table) - set(_PARSERS) - {own_key}
            if unknown:
                raise UsageError(
                    f"unknown key(s) {', '.join(sorted(unknown))} in {where}; the "
                    f"known ones are {own_key}, {', '.join(_PARSERS)}."
                )


def load_session_specs(
    flags: Mapping[str, object] | None = None, environ: Mapping[str, str] = os.environ
) -> tuple[str | None, list[SessionSpec]]:
    """The config file in force and the sessions it declares, for ``xsupervise serve``.

    A session table's own keys win over everything else (it is the most specific); the keys
    it does not set come from flags > environment > top-level file keys > defaults, as for
    ``start``. Unknown keys are errors: a typo must not silently fall back to a default.
    """
    base = load_settings(flags, environ)  # checks every key of the file (check_keys)
    path = config_file(environ)
    tables = (read_config_file(path) if path else {}).get(SESSION_TABLE, {})
    assert isinstance(tables, dict)  # check_keys made sure
    specs = []
    for name, table in tables.items():
        where = f"[{SESSION_TABLE}.{name}] in {path}"
        values = {field: getattr(base, field) for field in FIELDS}
        values["record"] = None  # a path is one session's own: only its table names one
        for field, raw in table.items():
            if field == "display":
                continue
            try:
                values[field] = _PARSERS[field](raw)
            except (TypeError, ValueError, OverflowError) as exc:
                raise UsageError(f"{field}={raw!r} in {where} is not valid: {exc}.") from None
        try:
            number = parse_display(table.get("display", ":auto"))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None
        specs.append(SessionSpec(name, number, Settings(**values)))
    return path, specs
