"""The restart ledger: each session name's history on disk, read and written under a lock.

One file per name in ``<runtime>/ledger/``; a separate ``.lock`` file is held with flock(2)
for each read-modify-write, so concurrent supervisors (and relaunched ones) see one history.
flock is released by the kernel when a holder dies, so a SIGKILL cannot wedge it.

A name's files outlive its sessions only while its history holds something: a start in
flight, failures, a backoff, FAILED, probation. A session's end (``prune``) removes both files
otherwise (under the lock), so any number of clean sessions leaves O(1) files (the ``starts``
count then begins again). Whoever locked the removed lock file's inode notices (it is no
longer the file at that path) and locks afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator

from ..host.paths import (
    RuntimeDir,
    ensure_private_dir,
    lock_file,
    remove_file,
    write_private_file,
)
from .policy import History

_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:@+")


def file_name(name: str) -> str:
    """A session name as a file name: unsafe characters become '_', never a path; a name that
    had to be changed gets a checksum of the original, so that two names never share a file."""
    cleaned = ("".join(char if char in _SAFE else "_" for char in name)[:100]).lstrip(".")
    if cleaned == name:
        return cleaned
    import zlib

    return f"{cleaned or '_'}-{zlib.crc32(name.encode()) & 0xFFFFFFFF:08x}"


class Ledger:
    def __init__(self, runtime: RuntimeDir, name: str):
        self.name = name
        self.directory = os.path.join(runtime.path, "ledger")
        base = os.path.join(self.directory, file_name(name))
        self.path = base + ".json"
        self.lock_path = base + ".lock"

    def __repr__(self) -> str:
        return f"<Ledger {self.name!r} at {self.path}>"

    @contextlib.contextmanager
    def update(self) -> Iterator[History]:
        """Hold the lock, yield the history, write it back if the block ends normally."""
        fd = self._lock()
        try:
            history = self._read()
            history.name = self.name
            yield history
            write_private_file(self.path, json.dumps(history.as_dict()).encode())
        finally:
            os.close(fd)  # releases the lock

    def prune(self) -> None:
        """At a session's end: remove the name's files if its history holds nothing (no
        failure history, nothing in flight). Never raises: it runs in a teardown."""
        if not os.path.exists(self.lock_path):
            return
        try:
            fd = self._lock()
            try:
                if holds_nothing(self._read()):
                    self._remove_locked()
            finally:
                os.close(fd)
        except OSError:
            pass

    def _lock(self) -> int:
        """Open and flock the lock file; returns its fd. Retries when the file we locked was
        removed (or replaced) meanwhile by a holder that found the history empty."""
        ensure_private_dir(self.directory)
        return lock_file(self.lock_path)

    def _remove_locked(self) -> None:
        """Remove the history and then the lock file, holding the lock."""
        remove_file(self.path)
        remove_file(self.lock_path)

    def read(self) -> History:
        """A snapshot, without the lock (for `status`)."""
        return self._read()

    def _read(self) -> History:
        return read_history(self.path)

    def reset(self) -> bool:
        """Forget the history; True if there was one."""
        fd = self._lock()
        try:
            existed = os.path.exists(self.path)
            self._remove_locked()
        finally:
            os.close(fd)
        return existed


def holds_nothing(history: History) -> bool:
    """No failure history, nothing in flight: nothing a later start would need to know."""
    return not (
        history.in_flight
        or history.failures
        or history.in_a_row
        or history.failed_at is not None
        or history.on_probation
        or history.next_start_at
    )


def read_history(path: str) -> History:
    """The history in a ledger file; a missing, torn or foreign file reads as a fresh one."""
    try:
        with open(path, "rb") as stream:
            data = json.load(stream)
        return History(**{key: value for key, value in data.items() if key in History.FIELDS})
    except (OSError, ValueError, TypeError):
        return History()


def all_ledgers(runtime: RuntimeDir) -> list[str]:
    """Paths of every ledger file (for `status`)."""
    directory = os.path.join(runtime.path, "ledger")
    try:
        return sorted(
            os.path.join(directory, name)
            for name in os.listdir(directory)
            if name.endswith(".json")
        )
    except FileNotFoundError:
        return []
