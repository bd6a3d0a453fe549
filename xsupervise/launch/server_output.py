"""What an X server printed, for a failure line: its own reason when it gave one.

The X.Org servers (Xorg, Xvfb, Xwayland, Xvnc: they share the dix) end a fatal error with

    (EE)
    Fatal server error:
    (EE) Invalid screen configuration bogus for -screen 0
    (EE)

and mark their other errors ``(EE) ...`` (Xorg's log adds a ``[ 12.345]`` time stamp). So a
failure line quotes the line after ``Fatal server error:`` and the other ``(EE)`` lines; only
when there are none does it fall back to the last lines the server printed (which, for a
server that prints its usage, would be the end of that usage).
"""

from __future__ import annotations

import os

_TAIL_BYTES = 16384  # enough for Xvfb's usage text (~5 KiB) before its fatal error
_TAIL_LINES = 3
_MAX_ERRORS = 4  # (EE) lines quoted besides the fatal one: a backtrace has dozens
_MAX_CHARS = 400

_FATAL = "Fatal server error:"
_EE = "(EE)"
# (EE) lines that are the fatal error's frame, not a reason.
_BOILERPLATE = (
    "Please consult",
    "Please also check the log file",
    "Server terminated with error",
    "at http://wiki.x.org",
    "for help.",
)


def read_output(path: str, since: int = 0) -> tuple[str, str]:
    """(reason, tail) of what the server printed after offset ``since`` (see module doc);
    either may be empty."""
    try:
        with open(path, "rb") as stream:
            stream.seek(0, os.SEEK_END)
            stream.seek(max(since, stream.tell() - _TAIL_BYTES))
            text = stream.read().decode("utf-8", "replace")
    except OSError:
        return "", ""
    return server_reason(text), last_lines(text)


def last_lines(text: str) -> str:
    """The last few non-empty lines, as one line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-_TAIL_LINES:])


def _unstamped(line: str) -> str:
    """The line without the ``[ 12.345]`` time stamp of Xorg's log, stripped."""
    line = line.strip()
    if line.startswith("["):
        end = line.find("]")
        if end > 0 and line[1:end].strip().replace(".", "").isdigit():
            return line[end + 1 :].strip()
    return line


def _strip_markers(line: str) -> str:
    return _unstamped(line).replace(_EE, "").strip()


def _is_error(line: str, content: str) -> bool:
    """An (EE) line with something to say (not the fatal error's frame)."""
    return (
        _unstamped(line).startswith(_EE) and bool(content) and not content.startswith(_BOILERPLATE)
    )


def server_reason(text: str) -> str:
    """'Fatal server error: <reason> | <other (EE) lines>' as one line, or '' if it gave none."""
    fatal = ""
    errors: list[str] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        content = _strip_markers(line)
        if content.startswith(_FATAL):
            reason = content[len(_FATAL) :].strip()
            for following in lines[i + 1 :]:
                if reason:
                    break
                reason = _strip_markers(following)
            fatal = reason or fatal
        elif _is_error(line, content) and content != fatal and content not in errors:
            errors.append(content)
    if fatal:
        errors = [error for error in errors if error != fatal]
        quoted = [f"{_FATAL} {fatal}", *errors[:_MAX_ERRORS]]
    else:
        quoted = errors[:_MAX_ERRORS]
    joined = " | ".join(quoted)
    return joined if len(joined) <= _MAX_CHARS else joined[: _MAX_CHARS - 3] + "..."


def quote(server: str, reason: str, tail: str) -> str:
    """The sentence a failure line ends with: the server's reason, else its last output."""
    if reason:
        return f"{server} said: {reason}"
    return f"Its last output: {tail or '(nothing)'}"
