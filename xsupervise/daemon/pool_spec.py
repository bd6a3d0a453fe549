"""``[pool.NAME]`` tables of the daemon's config file: warm pools of spare displays.

    [pool.default]
    size = 4                  # spare displays kept started and verified
    screen = "1920x1080x24"   # and any session setting (server, displayfd_timeout, ...)

A pool's keys win; the keys it leaves out come from flags > environment > the file's top
level > defaults, as for a ``[session.NAME]``. Unknown keys are errors. A pool's restart
budget is kept under the name ``pool.NAME`` (so it never shares one with a session).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..host.errors import UsageError
from ..launch.settings import (
    _PARSERS,
    FIELDS,
    POOL_TABLE,
    Settings,
    _count,
    config_file,
    load_settings,
    read_config_file,
)

DEFAULT_SIZE = 1


class PoolSpec:
    """One pool declared in the config file: its name, size and settings."""

    __slots__ = ("name", "settings", "size")

    def __init__(self, name: str, size: int, settings: Settings):
        self.name = name
        self.size = size
        self.settings = settings

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PoolSpec) and (self.name, self.size, self.settings) == (
            other.name,
            other.size,
            other.settings,
        )

    def __repr__(self) -> str:
        return f"PoolSpec({self.name!r}, size={self.size}, {self.settings!r})"

    @property
    def session_name(self) -> str:
        """The name its displays' records and restart budget go by."""
        return f"{POOL_TABLE}.{self.name}"


def load_pool_specs(
    flags: Mapping[str, object] | None = None, environ: Mapping[str, str] = os.environ
) -> list[PoolSpec]:
    """The pools the config file in force declares (none without a file)."""
    path = config_file(environ)
    data = read_config_file(path) if path else {}
    tables = data.get(POOL_TABLE, {})
    if not isinstance(tables, dict):
        raise UsageError(f"'{POOL_TABLE}' in {path} must be tables: [{POOL_TABLE}.NAME].")
    base = load_settings(flags, environ) if tables else None
    specs = []
    for name, table in tables.items():
        where = f"[{POOL_TABLE}.{name}] in {path}"
        if not isinstance(table, dict):
            raise UsageError(f"{where} must be a table of settings.")
        unknown = set(table) - set(_PARSERS) - {"size"}
        if unknown:
            raise UsageError(
                f"unknown key(s) {', '.join(sorted(unknown))} in {where}; the "
                f"known ones are size, {', '.join(_PARSERS)}."
            )
        assert base is not None
        values = {field: getattr(base, field) for field in FIELDS}
        values["record"] = None  # spares are not recorded: a lessee names its own file
        size = DEFAULT_SIZE
        for field, raw in table.items():
            if field == "record":
                raise UsageError(
                    f"record in {where}: a pool's displays are recorded by whoever leases "
                    "one (the lease request's record); remove it from the pool."
                )
            parse = _count if field == "size" else _PARSERS[field]
            try:
                value = parse(raw)
            except (TypeError, ValueError, OverflowError) as exc:
                raise UsageError(f"{field}={raw!r} in {where} is not valid: {exc}.") from None
            if field == "size":
                size = int(value)  # type: ignore[call-overload]
            else:
                values[field] = value
        specs.append(PoolSpec(name, size, Settings(**values)))
    return specs
