"""Settings read from the environment, and the machine's share this process may use.

One parser for integer settings (:func:`env_int`) and one count of usable cores (:func:`usable_cores`), for the
library, the CLI and the app alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

__all__ = ["env_int", "usable_cores"]

_log = logging.getLogger(__name__)


def env_int(name: str, default: int, env: Mapping[str, str] | None = None, *, minimum: int | None = 1,
            strict: bool = False) -> int:
    """The integer setting ``$name`` (read from ``env`` when given, else ``os.environ``); ``default`` when it is
    unset or blank.

    A value that is not an integer, or is below ``minimum`` (None: no lower bound), is a configuration slip: it is
    logged as a warning and ``default`` is used. With ``strict`` it raises ``ValueError`` instead (the message
    names the variable and its value), for settings that must not be guessed, such as a process's rank.
    """
    env = os.environ if env is None else env
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value: int | None = int(raw)
    except ValueError:
        value = None
    if value is not None and (minimum is None or value >= minimum):
        return value
    wanted = ("an integer" if minimum is None else "a positive integer" if minimum == 1
              else f"an integer of at least {minimum}")
    if strict:
        raise ValueError(f"{name}={raw!r} is not {wanted}")
    _log.warning("%s=%r is not %s; using %d", name, raw, wanted, default)
    return default


def usable_cores() -> int:
    """The CPU cores this process may run on: honours taskset and cgroup cpusets, unlike ``os.cpu_count()``
    (which it falls back to where the affinity cannot be read, e.g. not on Linux)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
