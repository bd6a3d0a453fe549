"""The restart ledger: each session name's history on disk, read and written under a lock.

One file per name in ``<runtime>/ledger/``; a separate ``.lock`` file is held with flock(2)
for each read-modify-write, so concurrent supervisors (and relaunched ones) see one history.
flock is released by the kernel when a holder dies, so a SIGKILL cannot wedge it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator

from ._paths import RuntimeDir, ensure_private_dir, remove_file, write_private_file
from ._policy import History

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
        ensure_private_dir(self.directory)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            history = self._read()
            history.name = self.name
            yield history
            write_private_file(self.path, json.dumps(history.as_dict()).encode())
        finally:
            os.close(fd)  # releases the lock

    def read(self) -> History:
        """A snapshot, without the lock (for `status`)."""
        return self._read()

    def _read(self) -> History:
        return read_history(self.path)

    def reset(self) -> bool:
        """Forget the history; True if there was one."""
        ensure_private_dir(self.directory)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            existed = os.path.exists(self.path)
            remove_file(self.path)
        finally:
            os.close(fd)
        return existed


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
