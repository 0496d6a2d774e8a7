"""CPU time per process group over a measurement window, read from ``/proc/PID/stat``.

A group is a name and a way to find its processes (fixed pids, with their descendants, or every
process with a given command name: ``beam.smp`` for RabbitMQ, ``postgres`` for PostgreSQL and all its
backends). A :class:`CpuSampler` thread reads every group's ``utime + stime`` a few times a second
and records the samples with ``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in every process
of the box), so a window ``[t0, t1]`` reported by another process can be cut out afterwards.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")

Finder = Callable[[], set[int]]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    return text[text.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds used so far by ``pid`` (its own threads), ``None`` once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def _all_pids() -> list[int]:
    return [int(entry.name) for entry in PROC.iterdir() if entry.name.isdigit()]


def by_command(name: str) -> Finder:
    """Every process whose command name (``/proc/PID/comm``) is ``name``."""

    def find() -> set[int]:
        found = set()
        for pid in _all_pids():
            try:
                if (PROC / str(pid) / "comm").read_text().strip() == name:
                    found.add(pid)
            except OSError:
                continue
        return found

    return find


def with_descendants(pids: Iterable[int]) -> Finder:
    """The given processes and every process started under them (the load tool's generators)."""
    roots = set(pids)

    def find() -> set[int]:
        parent: dict[int, int] = {}
        for pid in _all_pids():
            fields = _stat_fields(pid)
            if fields is not None:
                parent[pid] = int(fields[1])
        found = {pid for pid in roots if pid in parent}
        grew = True
        while grew:
            more = {pid for pid, ppid in parent.items() if ppid in found and pid not in found}
            found |= more
            grew = bool(more)
        return found

    return find


Snapshot = dict[str, dict[int, float]]


@dataclass
class CpuSampler:
    """Samples the CPU seconds of every group every ``interval`` seconds until stopped."""

    groups: dict[str, Finder]
    interval: float = 0.2
    samples: list[tuple[float, Snapshot]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def snapshot(self) -> Snapshot:
        taken: Snapshot = {}
        for name, find in self.groups.items():
            taken[name] = {pid: value for pid in find() if (value := cpu_seconds(pid)) is not None}
        return taken

    def __enter__(self) -> CpuSampler:
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), self.snapshot()))
            self._stop.wait(self.interval)

    def window(self, t0: float, t1: float) -> dict[str, float] | None:
        """CPU seconds per second of each group over ``[t0, t1]``: the first sample at or after ``t0``
        to the last at or before ``t1``. A process present at the end only (started inside the window)
        counts from zero. ``None`` when fewer than two samples fall inside."""
        times = [at for at, _ in self.samples]
        first, last = bisect.bisect_left(times, t0), bisect.bisect_right(times, t1) - 1
        if last <= first:
            return None
        (start_at, start), (end_at, end) = self.samples[first], self.samples[last]
        rates = {}
        for name, now in end.items():
            used = sum(value - start.get(name, {}).get(pid, 0.0) for pid, value in now.items())
            rates[name] = used / (end_at - start_at)
        return rates


def per_answer_us(rates: dict[str, float] | None, answers_per_s: float) -> dict[str, float | None]:
    """CPU microseconds per answer of each group, from its CPU seconds per second and the answer rate."""
    if rates is None or answers_per_s <= 0:
        return dict.fromkeys(rates or {}, None)
    return {name: round(rate / answers_per_s * 1e6, 1) for name, rate in rates.items()}
