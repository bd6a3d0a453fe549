"""The settings' value parsers (see launch.settings.FIELDS).

Parsers get text (environment) or any TOML value: float(), int() and iteration raise
TypeError for a value of the wrong type, which load_settings turns into a UsageError.
"""

from __future__ import annotations

import os


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
