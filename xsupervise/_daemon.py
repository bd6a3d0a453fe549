"""``xsupervise serve``: many supervised displays in one process, and a control socket.

Sessions come from the config file (``[session.NAME]`` tables: started at once, retried by
the restart policy until they work or are FAILED, then again after each cool-down) or from
``start`` requests on the control socket (tried once, then restarted like ``xsupervise start``
does). Each runs ``_session.Session`` as an asyncio task: the same launch path and
restart policy as the command line.

systemd: READY=1 once every configured session is ready or FAILED; STATUS= one line;
WATCHDOG=1 from the event loop (so a stuck loop stops the pings); RELOADING=1 and a config
re-read on SIGHUP; STOPPING=1 on SIGTERM/SIGINT.

The control protocol (newline-delimited JSON, one reply line per request line) is in the
README. Defences: at most ``MAX_CLIENTS`` connections (when full, the one idle longest is
dropped), lines of at most ``MAX_LINE`` bytes, ``IDLE_TIMEOUT`` seconds to send a complete
line, peers of another uid refused (root is always allowed).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time

from . import __version__, _log as log
from ._aio import run_steps
from ._settings import FIELDS, SessionSpec, default_session_name, load_session_specs, \
    load_settings, parse_display
from ._listener import Listener
from ._errors import EnvironmentProblem, NoSuchSession, StartError, UsageError, XSuperviseError
from ._notify import Notifier
from ._paths import RuntimeDir
from ._process import peer_credentials
from ._session import Mode, Session, clock_time

MAX_CLIENTS = 64
MAX_LINE = 64 * 1024
IDLE_TIMEOUT = 10.0
WRITE_TIMEOUT = 10.0
# READY=1 waits for the configured sessions, but not forever: a server that hangs costs the
# whole --timeout per try, so with the default policy it may never become FAILED. After this
# long, READY=1 is sent anyway and STATUS= names what is not ready (systemd's own start
# timeout, TimeoutStartSec=90 in our unit, must not kill and restart us in a loop).
READY_DEADLINE = 60.0


class DaemonEntry:
    """A session the daemon runs: its spec, where it came from, its core and task."""

    def __init__(self, key: str, spec: SessionSpec, origin: str, core: Session):
        self.key = key  # in Daemon.sessions: the name, or name#N for an unnamed request
        self.spec = spec
        self.origin = origin  # "config" or "request"
        self.core = core
        self.task: asyncio.Task | None = None
        self.stopping = False
        self.ready = asyncio.Event()
        self.error: BaseException | None = None  # why the task ended, if it did by an error

    def __repr__(self) -> str:
        return f"<DaemonEntry {self.spec.name} from {self.origin}: {self.core!r}>"

    def settled(self) -> bool:
        """Ready at least once, FAILED, or over: what READY=1 waits for."""
        return self.core.ready_once or self.core.state == "failed" or self.task.done()


class _Client:
    def __init__(self, writer: asyncio.StreamWriter):
        self.writer = writer
        self.last_activity = time.monotonic()
        self.busy = False


class Daemon:
    def __init__(self, runtime: RuntimeDir, listener: Listener, *,
                 flags: dict | None = None, notifier: Notifier | None = None):
        self.runtime = runtime
        self.listener = listener
        self.flags = flags or {}
        self.notifier = notifier or Notifier()
        self.sessions: dict[str, DaemonEntry] = {}
        self.clients: dict[asyncio.StreamWriter, _Client] = {}
        self.config_path: str | None = None
        self.policy = load_settings(self.flags).policy()  # for status; re-read on SIGHUP
        self._stop = asyncio.Event()
        self._signals = 0
        self._reload_lock = asyncio.Lock()
        self._readiness: asyncio.Task | None = None
        self._changed = asyncio.Event()  # a session changed state (see _announce_when_settled)
        self._requests = 0

    # -- life cycle ----------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.config_path, specs = load_session_specs(self.flags)  # a bad file: exit 2 now
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload_signal)
        # Python >= 3.13 would unlink the socket's path on close, even systemd's: we remove
        # our own in Listener.close, and never the one systemd holds.
        cleanup = {"cleanup_socket": False} if sys.version_info >= (3, 13) else {}
        server = await asyncio.start_unix_server(self._serve_client, sock=self.listener.sock,
                                                 limit=MAX_LINE, **cleanup)
        await self._reclaim()
        log.get().info("serving on %s (%s); config %s with %d session(s).",
                       self.listener.path or "a socket from systemd",
                       "socket-activated" if self.listener.activated else "bound by us",
                       self.config_path or "(none)", len(specs))
        for spec in specs:
            self._start_session(spec, "config")
        self._readiness = loop.create_task(self._announce_when_settled(first=True))
        watchdog = loop.create_task(self._watchdog()) if self.notifier.interval else None
        try:
            await self._stop.wait()
        finally:
            self.notifier.stopping(f"stopping {len(self.sessions)} display(s)")
            for task in (self._readiness, watchdog):
                if task is not None:
                    task.cancel()
            server.close()
            for client in list(self.clients.values()):
                client.writer.transport.abort()
            await self._stop_sessions(list(self.sessions.values()))
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
        return 0

    def _on_reload_signal(self) -> None:
        if not self._stop.is_set():
            asyncio.get_running_loop().create_task(self.reload())

    async def _reclaim(self) -> None:
        """Clear what killed supervisors left, in a thread: it may wait for a server's exit."""
        from ._recovery import reclaim_abandoned

        await asyncio.get_running_loop().run_in_executor(None, reclaim_abandoned, self.runtime)

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals == 1:
            log.get().info("%s: stopping every display.", signal.Signals(signum).name)
            self._stop.set()
        else:  # a second signal: cut the X servers' grace short
            for managed in self.sessions.values():
                managed.task.cancel()

    async def _watchdog(self) -> None:
        # This runs on the event loop: if the loop is stuck, the pings stop and systemd
        # restarts us (WatchdogSec=), which is the point.
        while True:
            self.notifier.ping()
            await asyncio.sleep(self.notifier.interval)

    async def _announce_when_settled(self, first: bool = False) -> None:
        """READY=1 once every configured session is ready or FAILED (or READY_DEADLINE)."""
        deadline = time.monotonic() + READY_DEADLINE
        while not all(managed.settled() for managed in self._configured()):
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
            except TimeoutError:
                log.get().error("not every configured display is ready after %g s; reporting "
                                "ready anyway so that systemd does not restart us in a loop: %s",
                                READY_DEADLINE, self.status_line())
                break
        self.notifier.ready(self.status_line())
        log.get().info("%s: %s", "ready" if first else "reloaded", self.status_line())

    def _configured(self) -> list[DaemonEntry]:
        return [managed for managed in self.sessions.values() if managed.origin == "config"]

    # -- sessions ------------------------------------------------------------------------
    def _start_session(self, spec: SessionSpec, origin: str, no_wait: bool = False,
                       key: str | None = None) -> DaemonEntry:
        key = key or spec.name
        mode = Mode.DAEMON_CONFIGURED if origin == "config" else Mode.DAEMON_REQUESTED
        core = Session(spec.settings, self.runtime, spec.number, name=spec.name, mode=mode,
                       no_wait=no_wait, on_event=self._on_event)
        managed = DaemonEntry(key, spec, origin, core)
        managed.task = asyncio.get_running_loop().create_task(self._run_session(managed))
        # Also when the task is cancelled before it ever ran (its finally would not run).
        managed.task.add_done_callback(lambda _task: self._session_over(managed))
        self.sessions[key] = managed
        return managed

    def _session_over(self, managed: DaemonEntry) -> None:
        managed.core.files.remove()  # idempotent; the steps remove them when they ran
        if self.sessions.get(managed.key) is managed:
            del self.sessions[managed.key]
        self._changed.set()
        self.notifier.status(self.status_line())

    async def _run_session(self, managed: DaemonEntry) -> None:
        try:
            await run_steps(managed.core.steps())
        except asyncio.CancelledError:
            log.get().info("session %s stopped.", managed.spec.name,
                           extra=managed.core.log_fields())
        except XSuperviseError as error:
            managed.error = error
            log.get().error("session %s ended: %s", managed.spec.name, error,
                            extra=managed.core.log_fields())
        except Exception as error:  # a bug: keep serving the others, say so loudly
            managed.error = error
            log.get().exception("session %s crashed", managed.spec.name,
                                extra=managed.core.log_fields())

    def _on_event(self, core: Session, event: str) -> None:
        if event == "ready":
            for managed in self.sessions.values():
                if managed.core is core:
                    managed.ready.set()
        self._changed.set()
        self.notifier.status(self.status_line())

    async def _stop_sessions(self, sessions: list[DaemonEntry]) -> None:
        for managed in sessions:
            if not managed.stopping:  # a second cancel would cut the server's grace short
                managed.stopping = True
                managed.task.cancel()
        if sessions:
            await asyncio.wait([managed.task for managed in sessions])

    def status_line(self) -> str:
        """One human line, e.g. '2 displays ready (:5 :7), 1 in backoff until 12:03:41'."""
        ready = [m.core.display for m in self.sessions.values() if m.core.state == "ready"]
        backoff = [m.core.next_retry_at for m in self.sessions.values()
                   if m.core.state == "backoff" and m.core.next_retry_at]
        failed = [m.spec.name for m in self.sessions.values() if m.core.state == "failed"]
        starting = sum(m.core.state == "starting" for m in self.sessions.values())
        parts = [f"{len(ready)} display{'s' * (len(ready) != 1)} ready"
                 + (f" ({' '.join(ready)})" if ready else "")]
        if starting:
            parts.append(f"{starting} starting")
        if backoff:
            parts.append(f"{len(backoff)} in backoff until {clock_time(min(backoff))}")
        if failed:
            parts.append(f"{len(failed)} FAILED ({' '.join(failed)})")
        return ", ".join(parts)

    async def reload(self) -> None:
        """SIGHUP: re-read the config file; start, stop or restart what changed."""
        async with self._reload_lock:
            self.notifier.reloading()
            try:
                config_path, specs = load_session_specs(self.flags)
                policy = load_settings(self.flags).policy()
            except XSuperviseError as error:
                log.get().error("config not reloaded, keeping the old one: %s", error)
                self._announce_again()
                return
            self.config_path, self.policy = config_path, policy
            wanted = {spec.name: spec for spec in specs}
            outdated = [managed for name, managed in self.sessions.items()
                        if managed.origin == "config" and wanted.get(name) != managed.spec]
            await self._stop_sessions(outdated)
            if self._stop.is_set():  # SIGTERM came while we stopped them: start nothing new
                return
            for spec in specs:
                if spec.name not in self.sessions:
                    self._start_session(spec, "config")
            log.get().info("reloaded %s: %d session(s), %d stopped or restarted.",
                           self.config_path or "(no config file)", len(specs), len(outdated))
            self._announce_again()

    def _announce_again(self) -> None:
        """After RELOADING=1: READY=1 again once the (new) configured sessions are settled."""
        if self._readiness is not None:
            self._readiness.cancel()
        self._readiness = asyncio.get_running_loop().create_task(self._announce_when_settled())

    # -- the control socket ----------------------------------------------------------------
    async def _serve_client(self, reader: asyncio.StreamReader,
                            writer: asyncio.StreamWriter) -> None:
        client = _Client(writer)
        try:
            _pid, uid, _gid = peer_credentials(writer.get_extra_info("socket"))
            if uid not in (os.getuid(), 0):
                await self._reply(client, _error(f"uid {uid} may not use this daemon (it runs as "
                                                 f"uid {os.getuid()}); ask as that user.", 2))
                return
            if not self._make_room():
                await self._reply(client, _error(f"too many clients ({MAX_CLIENTS}) are being "
                                                 "answered; try again shortly.", 1))
                return
            self.clients[writer] = client
            while True:
                try:
                    line = await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT)
                except TimeoutError:
                    await self._reply(client, _error(f"no complete request line within "
                                                     f"{IDLE_TIMEOUT:g} s; closing.", 2))
                    return
                except ValueError:  # longer than the limit
                    await self._reply(client, _error(f"request line longer than {MAX_LINE} "
                                                     "bytes; closing.", 2))
                    return
                if not line.endswith(b"\n"):
                    return  # EOF, perhaps half-way through a line: nobody to answer
                client.busy, client.last_activity = True, time.monotonic()
                reply = await self.handle_line(line)
                client.busy, client.last_activity = False, time.monotonic()
                await self._reply(client, reply)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            self.clients.pop(writer, None)
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()  # it does not read: do not wait to flush to it
            else:
                writer.close()

    def _make_room(self) -> bool:
        """At MAX_CLIENTS, drop the connection idle longest (never one being answered)."""
        if len(self.clients) < MAX_CLIENTS:
            return True
        idle = [client for client in self.clients.values() if not client.busy]
        if not idle:
            return False
        oldest = min(idle, key=lambda client: client.last_activity)
        self.clients.pop(oldest.writer, None)
        oldest.writer.transport.abort()  # frees its fd now; close() would wait to flush
        return True

    async def _reply(self, client: _Client, reply: dict) -> None:
        client.writer.write(json.dumps(reply).encode() + b"\n")
        await asyncio.wait_for(client.writer.drain(), WRITE_TIMEOUT)

    async def handle_line(self, line: bytes) -> dict:
        """One request line -> one reply object. Never raises."""
        try:
            request = json.loads(line)
        except (ValueError, RecursionError):
            return _error("the request is not valid JSON; send one object per line, "
                          'e.g. {"op": "ping"}.', 2)
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return _error('a request is a JSON object with an "op" string, e.g. {"op": "ping"}.',
                          2)
        handler = getattr(self, "_op_" + request["op"], None) if request["op"] in OPS else None
        if handler is None:
            return _error(f"unknown op {request['op'][:40]!r}; known: {', '.join(OPS)}.", 2)
        unknown = sorted(set(request) - {"op", *OPS[request["op"]]})
        if unknown:
            return _error(f"unknown field(s) for {request['op']}: {', '.join(unknown)[:200]}; "
                          f"known: {', '.join(OPS[request['op']]) or '(none)'}.", 2)
        try:
            return {"ok": True, **await handler(request)}
        except XSuperviseError as error:
            return _error(str(error), error.exit_code)
        except Exception:  # a bug: answer, log, keep serving
            log.get().exception("request %s failed", request["op"])
            return _error(f"internal error while handling {request['op']!r}; see the daemon's "
                          "log.", 1)

    async def _op_ping(self, request: dict) -> dict:
        return {"pid": os.getpid(), "version": __version__, "sessions": len(self.sessions),
                "status": self.status_line()}

    async def _op_start(self, request: dict) -> dict:
        if self._stop.is_set():  # shutting down: a session started now would outlive the list
            raise EnvironmentProblem("the daemon is stopping; retry once it is back, or run "
                                     "'xsupervise start' without --detach.")
        number = parse_display(_field(request, "display", str, ":auto"))
        flags = {field: request[field] for field in FIELDS if field in request}
        settings = load_settings(flags)
        given = _field(request, "name", str, None)
        name = given or default_session_name(number, settings.server)
        # A named request joins a running session of that name. Unnamed ones get a display
        # of their own (as `xsupervise start` does), sharing only the default name's budget.
        managed = self.sessions.get(name) if given else None
        if managed is None:
            self._requests += 1
            spec = SessionSpec(name, number, settings)
            managed = self._start_session(spec, "request",
                                          no_wait=bool(_field(request, "no_wait", bool, False)),
                                          key=name if given else f"{name}#{self._requests}")
        waiter = asyncio.ensure_future(managed.ready.wait())
        try:
            await asyncio.wait([managed.task, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not managed.ready.is_set() or managed.core.server is None:
            error = managed.error
            if isinstance(error, XSuperviseError):
                raise error
            raise StartError(f"session {name} ended before it was ready", server="?", pid=None,
                             elapsed=0.0)
        server = managed.core.server
        return {"name": name, "display": server.display, "env": server.env,
                "xauthority": server.auth_path, "server_pid": server.pid,
                "supervisor_pid": os.getpid(), "vendor": server.facts.vendor,
                "screen": f"{server.facts.width}x{server.facts.height}x{server.facts.depth}"}

    async def _op_stop(self, request: dict) -> dict:
        display = _field(request, "display", str, None)
        name = _field(request, "name", str, None)
        every = bool(_field(request, "all", bool, False))
        if not (display or name or every):
            raise UsageError('stop needs "display": ":N", "name": NAME or "all": true.')
        number = parse_display(display) if display else None
        if display and number is None:
            raise UsageError(f'stop needs a display number, not {display!r}, e.g. ":5".')
        wait = _field(request, "wait", (int, float), 10.0)
        if isinstance(wait, bool) or not 0 <= wait <= 3600:
            raise UsageError('"wait" must be a number of seconds from 0 to 3600.')
        ours = [managed for managed in self.sessions.values()
                if every or managed.spec.name == name
                or (display and managed.core.display == f":{number}")]
        lines = [f"{m.core.display or m.spec.name}: stopped (session {m.spec.name} of "
                 f"xsupervise serve pid {os.getpid()})" for m in ours]
        await self._stop_sessions(ours)
        if display or every:
            from ._local_ops import stop_sessions

            try:  # sessions of other supervisors in our runtime directory (blocking: a thread)
                lines += await asyncio.get_running_loop().run_in_executor(
                    None, stop_sessions, self.runtime, number, float(wait))
            except NoSuchSession:
                if not ours:
                    raise
        elif not ours:
            raise NoSuchSession(f"no session named {name!r} runs in this daemon.")
        return {"stopped": lines}

    async def _op_list(self, request: dict) -> dict:
        from ._records import live_records

        return {"sessions": [record.as_dict() for record in live_records(self.runtime)]}

    async def _op_status(self, request: dict) -> dict:
        from ._local_ops import session_status

        target = _field(request, "target", str, None)
        entries = session_status(self.runtime, target, self.policy, time.time())
        return {"sessions": entries, "status": self.status_line()}

    async def _op_reset(self, request: dict) -> dict:
        from ._ledger import Ledger

        name = _field(request, "name", str, None)
        if not name:
            raise UsageError('reset needs "name": NAME.')
        return {"name": name, "had_history": Ledger(self.runtime, name).reset()}


# Each op and the fields it takes besides "op": any other field is refused, so that a typo
# (e.g. "scren") is an error instead of a silent default.
OPS = {"ping": (), "start": ("display", "name", "no_wait", *FIELDS),
       "stop": ("display", "name", "all", "wait"), "list": (), "status": ("target",),
       "reset": ("name",)}


def _field(request: dict, key: str, kind: type | tuple[type, ...], default):
    value = request.get(key, default)
    if value is not default and not isinstance(value, kind):
        wanted = kind.__name__ if isinstance(kind, type) else "number"
        raise UsageError(f'"{key}" must be a {wanted}, not {type(value).__name__}.')
    return value


def _error(message: str, exit_code: int) -> dict:
    return {"ok": False, "error": message, "exit_code": exit_code}


def serve(runtime: RuntimeDir, listener: Listener, flags: dict | None = None) -> int:
    """Run the daemon until SIGTERM/SIGINT; the exit code."""
    try:
        return asyncio.run(Daemon(runtime, listener, flags=flags).run())
    finally:
        listener.close()
