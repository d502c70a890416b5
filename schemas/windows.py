"""Metric window names, as the settings list them and ``MetricCellUpdate.window`` publishes them.

A name is ``<number><m|h|d>``, a tumbling window of that length aligned to the Unix epoch, or ``all``, the
all-time window. The grammar lives here, below both ``config`` and ``streams.domain``: the settings check the
names they are given with it, and the domain reads the windows of stored cells by it.
"""

from __future__ import annotations

import re

_UNITS = {"m": 60, "h": 3600, "d": 86400}
_PATTERN = re.compile(r"^(\d+)([mhd])$")


def window_seconds(name: str) -> int | None:
    """The length of the window ``name`` in seconds, None for ``all``; raise ValueError on anything else."""
    if name == "all":
        return None
    match = _PATTERN.match(name)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window {name!r} is not of the form <number><m|h|d> or 'all'")
    return int(match.group(1)) * _UNITS[match.group(2)]
