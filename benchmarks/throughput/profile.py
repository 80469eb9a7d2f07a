"""Reading a profiled worker's cProfile stats: own time by package, jobkeeper's functions by
cumulative time (the ones ``systems.jobkeeper.PROFILED`` names), the top functions by own time."""

from __future__ import annotations

import pstats
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from systems.jobkeeper import PROFILED
from throughput.scenarios import Drain

_GROUPS = (
    ("jobkeeper", "/jobkeeper/"),
    ("cachetools", "/cachetools/"),
    ("SQLAlchemy", "/sqlalchemy/"),
    ("asyncpg (Python part)", "/asyncpg/"),
    ("asyncio", "/asyncio/"),
    ("json", "/json/"),
    ("uuid", "/uuid.py"),
    ("other standard library (enum, threading, abc...)", "/lib/python3"),
    ("other standard library (enum, threading, abc...)", "<frozen"),
)


@dataclass(frozen=True, slots=True)
class Hotspot:
    name: str
    calls: int
    tottime: float
    cumtime: float


@dataclass(frozen=True, slots=True)
class Profile:
    drain: Drain
    total: float  # profiled seconds excluding waiting in the selector
    idle: float
    groups: tuple[tuple[str, float], ...]
    top: tuple[Hotspot, ...]
    cumulative: tuple[Hotspot, ...]


def _label(key: tuple[str, int, str]) -> str:
    filename, line, func = key
    if filename == "~":
        return func
    parts = Path(filename).parts
    short = "/".join(parts[-2:]) if "site-packages" in parts or "jobkeeper" in parts else filename
    return f"{short}:{line} {func}"


def read_profile(path: Path, run: Drain) -> Profile:
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    idle = sum(
        tt for (fn, _, func), (_, _, tt, _, _) in stats.items() if fn == "~" and "epoll" in func
    )
    total = sum(tt for (_, _, tt, _, _) in stats.values()) - idle
    groups: dict[str, float] = {}
    for (fn, _, func), (_, _, tt, _, _) in stats.items():
        if fn == "~" and "epoll" in func:
            continue
        name = next((g for g, marker in _GROUPS if marker in fn), None)
        if name is None:
            name = "C functions (asyncpg protocol, sockets, builtins)" if fn == "~" else "other"
        groups[name] = groups.get(name, 0.0) + tt
    ranked = sorted(
        (
            Hotspot(_label(key), nc, tt, ct)
            for key, (_, nc, tt, ct, _) in stats.items()
            if not (key[0] == "~" and "epoll" in key[2])
        ),
        key=lambda h: h.tottime,
        reverse=True,
    )
    cumulative = [
        Hotspot(_label(key), nc, tt, ct)
        for key, (_, nc, tt, ct, _) in stats.items()
        if any(key[0].endswith(f"jobkeeper/{f}") and key[2] == fn for f, fn in PROFILED)
    ]
    return Profile(
        run,
        total,
        idle,
        tuple(sorted(groups.items(), key=lambda kv: kv[1], reverse=True)),
        tuple(ranked[:12]),
        tuple(sorted(cumulative, key=lambda h: h.cumtime, reverse=True)),
    )
