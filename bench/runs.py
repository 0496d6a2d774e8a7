"""Repeated benchmark runs: the load-average gate before each run, medians of the kept runs, and the
one JSON line every benchmark ends with.

A benchmark is only worth reading when it had the machine to itself. Before each run the gate waits
(up to ``--cool-down`` seconds) for the 1-minute load average to fall to ``--max-load``; a run that
has to start above it is still taken and printed, but marked ``discarded: load average X`` and left
out of the medians. The load average is printed with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


def add_options(parser: argparse.ArgumentParser, *, duration: float, warmup: float = 5.0) -> None:
    """The options every benchmark shares: runs, window, load gate."""
    parser.add_argument("--runs", type=int, default=3, help="runs of each kind; the figures are their median")
    parser.add_argument("--duration", type=float, default=duration, help="seconds of the measured window")
    parser.add_argument("--warmup", type=float, default=warmup, help="seconds of load before the window (not counted)")
    parser.add_argument(
        "--max-load", type=float, default=1.5, help="discard a run that starts above this 1-minute load average"
    )
    parser.add_argument(
        "--cool-down", type=float, default=120, help="seconds to wait, before each run, for the load to fall"
    )


def parser(doc: str | None, *, duration: float, warmup: float = 5.0) -> argparse.ArgumentParser:
    """A benchmark's command line: the first line of its ``doc`` as description, and ``add_options``."""
    made = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None)
    add_options(made, duration=duration, warmup=warmup)
    return made


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def wait_for_quiet(max_load: float, cool_down: float) -> float:
    """Wait until the 1-minute load average is at most ``max_load`` or ``cool_down`` has passed;
    return the load average then."""
    deadline = time.monotonic() + cool_down
    load = load_avg()
    while load > max_load and time.monotonic() < deadline:
        time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        load = load_avg()
    return load


@dataclass
class Runs:
    """The figures of every run by kind (``stack``, ``raw``, ...), each with its load average."""

    max_load: float
    cool_down: float
    by_kind: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Runs:
        return cls(max_load=args.max_load, cool_down=args.cool_down)

    def take(self, kind: str, index: int, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``measure`` once, after the load gate; record and print its figures."""
        load = wait_for_quiet(self.max_load, self.cool_down)
        figures = measure()
        figures["load_avg_start"] = load
        figures["load_avg_end"] = load_avg()
        if load > self.max_load:
            figures["discarded"] = f"load average {load:.2f}"
        self.by_kind.setdefault(kind, []).append(figures)
        mark = f"  discarded: load average {load:.2f}" if load > self.max_load else ""
        print(f"run {index + 1} {kind:11} (load average {load:.2f}){mark} {json.dumps(figures)}", flush=True)
        return figures

    def kept(self, kind: str) -> list[dict[str, Any]]:
        return [run for run in self.by_kind.get(kind, []) if "discarded" not in run]

    def median(self, kind: str, pick: Callable[[dict[str, Any]], float | None]) -> float | None:
        """The median of ``pick(run)`` over the kept runs of ``kind`` (``None`` if none has a value)."""
        values = [value for run in self.kept(kind) if (value := pick(run)) is not None]
        return round(statistics.median(values), 1) if values else None

    def median_of_keys(self, kind: str, key: str) -> dict[str, float | None]:
        """Per name, the median of ``run[key][name]`` (a dict of figures such as CPU µs per answer)."""
        names: Iterable[str] = {name for run in self.kept(kind) for name in run.get(key) or {}}

        def picker(name: str) -> Callable[[dict[str, Any]], float | None]:
            return lambda run: (run.get(key) or {}).get(name)

        return {name: self.median(kind, picker(name)) for name in sorted(names)}

    def loads(self) -> list[float]:
        return [run["load_avg_start"] for runs in self.by_kind.values() for run in runs]

    def summary(self) -> dict[str, Any]:
        """What every final JSON line carries about the runs themselves."""
        every = [run for runs in self.by_kind.values() for run in runs]
        return {
            "runs": len(every),
            "discarded": [run["discarded"] for run in every if "discarded" in run],
            "load_avg": self.loads(),
            "max_load": self.max_load,
        }


def emit(figures: dict[str, Any]) -> None:
    """The benchmark's last line on stdout: one JSON object."""
    print(json.dumps(figures), flush=True)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return round(numerator / denominator, 3)
