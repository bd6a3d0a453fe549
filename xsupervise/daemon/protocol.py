"""The control protocol of ``xsupervise serve``, in one place: the daemon and ``client.py`` both
read their ops and fields from ``OPS`` below.

Newline-delimited JSON over a Unix stream socket. A request is one JSON object on one line
(at most ``MAX_LINE`` bytes, sent within ``IDLE_TIMEOUT`` seconds) with an ``"op"``; each
gets one reply line, in order::

    {"ok": true, REPLY FIELDS...}
    {"ok": false, "error": "one sentence: what happened, what to do", "exit_code": N}

``exit_code`` is the ``ExitCode`` the CLI exits with for that error. Besides replies, the
daemon may push an *event* to a connection, unasked: one line with an ``"event"`` and no
``"ok"`` (``EVENTS`` below), e.g. when a leased display died; a client reads it wherever it
comes, between replies or while idle. A field the op does not
take is refused (exit code 2): a misspelt setting must be an error, not a silent default.
Fields are checked by ``check_request`` on both sides, so the client refuses what the
daemon would refuse, with the same message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

from ..host.errors import ExitCode, UsageError
from ..launch.settings import FIELDS as SETTINGS

TYPE_CHECKING = False  # not `typing.TYPE_CHECKING`: importing typing costs the CLI time
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from ..session.session import LaunchedServer

    Reply: TypeAlias = dict[str, Any]
    """A decoded reply; its fields are the op's ``Op.reply`` (plus ``ok``)."""


MAX_LINE = 64 * 1024  # bytes in one request line, newline included
IDLE_TIMEOUT = 10.0  # seconds a client may take to send a complete line

_NUMBER = (int, float)


def _seconds_to_wait(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, _NUMBER) or not 0 <= value <= 3600:
        return '"wait" must be a number of seconds from 0 to 3600.'
    return None


class Field:
    """A request field: its JSON type (None: any, checked later by the settings), default,
    and an optional extra check that returns the error sentence, or None when it is fine."""

    __slots__ = ("check", "default", "kind", "name")

    def __init__(
        self,
        name: str,
        kind: type | tuple[type, ...] | None,
        default: object = None,
        check: Callable[[object], str | None] | None = None,
    ):
        self.name = name
        self.kind = kind
        self.default = default
        self.check = check

    def __repr__(self) -> str:
        return f"Field({self.name!r}, default={self.default!r})"

    def read(self, request: Mapping[str, object]) -> object:
        """The field's value in ``request`` (the default when absent); UsageError if wrong."""
        value = request.get(self.name, self.default)
        if value is not self.default and self.kind is not None and not isinstance(value, self.kind):
            wanted = self.kind.__name__ if isinstance(self.kind, type) else "number"
            raise UsageError(f'"{self.name}" must be a {wanted}, not {type(value).__name__}.')
        problem = self.check(value) if self.check is not None else None
        if problem:
            raise UsageError(problem)
        return value


class Op:
    """One op: the fields it takes besides "op", and the fields of its reply besides "ok"."""

    __slots__ = ("fields", "name", "reply")

    def __init__(self, name: str, fields: tuple[Field, ...], reply: tuple[str, ...]):
        self.name = name
        self.fields = {field.name: field for field in fields}
        self.reply = reply

    def __repr__(self) -> str:
        return f"Op({self.name!r}, fields={list(self.fields)}, reply={list(self.reply)})"


START_REPLY = (
    "name",
    "display",
    "env",
    "xauthority",
    "server_pid",
    "supervisor_pid",
    "vendor",
    "screen",
    "vnc",
)

OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("ping", (), reply=("pid", "version", "sessions", "status")),
        # Start a display, or join the running session of that name. Besides these, every
        # setting (SETTINGS: screen, server, displayfd_timeout, ...), checked as the config is.
        Op(
            "start",
            (
                Field("display", str, ":auto"),
                Field("name", str),
                Field("no_wait", bool, False),
                *(Field(setting, None) for setting in SETTINGS),
            ),
            reply=START_REPLY,
        ),
        # One of "display": ":N", "name": NAME or "all": true; "wait": seconds for them to exit.
        Op(
            "stop",
            (
                Field("display", str),
                Field("name", str),
                Field("all", bool, False),
                Field("wait", _NUMBER, 10.0, _seconds_to_wait),
            ),
            reply=("stopped",),
        ),
        Op("list", (), reply=("sessions", "pools")),
        Op("status", (Field("target", str),), reply=("sessions", "status", "pools")),
        # A display of pool "pool", held until "release" or until this connection closes;
        # "wait": seconds to wait for a spare to become ready when none is; "record": an
        # absolute path the daemon records the display to (see launch/recording.py).
        Op(
            "lease",
            (
                Field("pool", str, "default"),
                Field("wait", _NUMBER, 30.0, _seconds_to_wait),
                Field("record", str),  # a video of the display to this path, until released
            ),
            reply=("lease", "pool", *START_REPLY),
        ),
        Op("release", (Field("lease", str),), reply=("released",)),
        Op("pools", (), reply=("pools",)),
        Op("reset", (Field("name", str),), reply=("name", "had_history")),
    )
}


# Events the daemon pushes, by name: their fields besides "event".
EVENTS: dict[str, tuple[str, ...]] = {
    # A lease ended without its lessee asking: its display "died" (its X server ended) or was
    # "revoked" (`xsupervise stop :N`). "message" is one line saying which and why. The
    # connection is closed after it once it holds no other lease.
    "lease-ended": ("lease", "pool", "display", "reason", "message"),
}


def event(name: str, **fields: object) -> Reply:
    """An event line's object (``encode`` it); its fields are ``EVENTS[name]``."""
    assert set(fields) == set(EVENTS[name]), (name, sorted(fields))
    return {"event": name, **fields}


def check_request(request: object) -> tuple[Op, dict[str, object]]:
    """The op and its every field's value (defaults filled in); UsageError if malformed."""
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise UsageError('a request is a JSON object with an "op" string, e.g. {"op": "ping"}.')
    name: str = request["op"]
    op = OPS.get(name)
    if op is None:
        raise UsageError(f"unknown op {name[:40]!r}; known: {', '.join(OPS)}.")
    unknown = sorted(set(request) - {"op", *op.fields})
    if unknown:
        raise UsageError(
            f"unknown field(s) for {name}: {', '.join(unknown)[:200]}; "
            f"known: {', '.join(op.fields) or '(none)'}."
        )
    return op, {field.name: field.read(request) for field in op.fields.values()}


def parse_request(line: bytes) -> tuple[Op, dict[str, object]]:
    """One request line -> its op and field values; UsageError if it is not a valid request."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError):
        raise UsageError(
            'the request is not valid JSON; send one object per line, e.g. {"op": "ping"}.'
        ) from None
    return check_request(request)


def encode(message: Mapping[str, object]) -> bytes:
    """A request or reply as its line on the wire."""
    return json.dumps(message).encode() + b"\n"


def error_reply(message: str, exit_code: int) -> Reply:
    return {"ok": False, "error": message, "exit_code": exit_code}


def reply_exit_code(reply: Mapping[str, object]) -> int:
    """The exit code of an error reply; FAILURE if it carries none we can use."""
    code = reply.get("exit_code")
    return code if isinstance(code, int) and not isinstance(code, bool) else ExitCode.FAILURE


def display_reply(name: str, server: LaunchedServer) -> Reply:
    """What ``start`` replies for a ready display (``lease`` adds its id and pool to it)."""
    import os

    facts = server.facts
    assert facts is not None  # replied only once verified
    return {
        "name": name,
        "display": server.display,
        "env": server.env,
        "xauthority": server.auth_path,
        "server_pid": server.pid,
        "supervisor_pid": os.getpid(),
        "vendor": facts.vendor,
        "screen": f"{facts.width}x{facts.height}x{facts.depth}",
        # The xvnc profile's endpoint (an XServer's): {"unix": PATH} or {"host", "port"}.
        "vnc": vnc.to_json() if (vnc := getattr(server, "vnc", None)) else None,
    }
