"""Run one scenario over one or more generator processes and gather one result.

The parent process only steers and measures: it starts the shares (``spawn``ed processes, each
with its own descriptor limit and event loop), prints progress, and samples the gateway's memory
before connecting, once everyone has joined, during the load and after everyone has disconnected.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import queue
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

from chat_loadtest import procinfo
from chat_loadtest.share import RunConfig, Share, run_share
from chat_loadtest.stats import merge, summary, window


@dataclass
class GatewayProbe:
    """Memory of the gateway process, when it can be read (same host, permission to see its /proc)."""

    pid: int | None
    samples: dict[str, int | None] = field(default_factory=dict)
    peak: int | None = None

    def sample(self, label: str | None = None) -> int | None:
        value = procinfo.rss_bytes(self.pid) if self.pid is not None else None
        if value is not None:
            self.peak = max(self.peak or 0, value)
        if label is not None:
            self.samples[label] = value
        return value


def plan_shares(config: RunConfig) -> list[Share]:
    users, processes = config.scenario.users, max(1, min(config.processes, config.scenario.users))
    shares, first = [], 0
    for index in range(processes):
        count = users // processes + (1 if index < users % processes else 0)
        shares.append(Share(index=index, first_user=first, users=count, rate=config.scenario.rate * count / users))
        first += count
    return shares


def _child(config: RunConfig, share: Share, channel: Any, go: Any, release: Any) -> None:
    from chat_common.process import raise_nofile_limit, run

    raise_nofile_limit()
    try:
        run(run_share(config, share, channel, go, release))
    except BaseException as exc:
        channel.put(("failed", share.index, {"error": f"{type(exc).__name__}: {exc}"}))
        raise


def run_load(
    config: RunConfig, *, gateway_pid: int | None, settle_s: float = 5.0, out: TextIO = sys.stderr
) -> dict[str, Any]:
    probe = GatewayProbe(gateway_pid)
    probe.sample("before")
    shares = plan_shares(config)
    # the handshake budget is for the whole run: the gateway caps sockets that have not joined yet
    # per client address (WS_MAX_UNAUTHENTICATED_PER_ADDRESS, 256 by default), and every share
    # connects from the same address
    config = dataclasses.replace(config, connect_concurrency=max(1, config.connect_concurrency // len(shares)))
    ctx = multiprocessing.get_context("spawn")
    channel, go, release = ctx.Queue(), ctx.Event(), ctx.Event()
    children = [ctx.Process(target=_child, args=(config, s, channel, go, release), daemon=True) for s in shares]
    for child in children:
        child.start()
    latest: dict[int, dict[str, Any]] = {}
    phases: dict[str, set[int]] = {"ready": set(), "loaded": set(), "done": set()}
    results: dict[int, dict[str, Any]] = {}
    began = time.monotonic()
    load_started = load_ended = 0.0
    last_print = 0.0
    phase = "connecting"
    try:
        while len(phases["done"]) < len(shares):
            try:
                kind, index, payload = channel.get(timeout=0.5)
            except queue.Empty:
                kind, index, payload = "tick", -1, {}
            if kind == "failed":
                raise RuntimeError(f"generator process {index} failed: {payload['error']}")
            if kind in phases:
                phases[kind].add(index)
            if kind == "done":
                results[index] = payload
            elif kind != "tick":
                latest[index] = payload
            if phase == "connecting" and len(phases["ready"]) == len(shares):
                probe.sample("connected")
                probe.samples["open_fds_connected"] = procinfo.open_fds(gateway_pid) if gateway_pid else None
                phase, load_started = "load", time.monotonic()
                go.set()
            elif phase == "load" and len(phases["loaded"]) == len(shares):
                probe.sample("after_load")
                phase, load_ended = "closing", time.monotonic()
                release.set()
            elif phase == "load":
                probe.sample()
            if any(not c.is_alive() and c.exitcode not in (0, None) for c in children) and phase != "done":
                raise RuntimeError("a generator process died; see its output above")
            now = time.monotonic()
            if now - last_print >= 1.0:
                last_print = now
                print(_progress_line(phase, now - began, merge(list(latest.values())), probe), file=out, flush=True)
    finally:
        go.set()
        release.set()
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
    time.sleep(settle_s)
    probe.sample("after_disconnect")
    total = merge([results[i] for i in sorted(results)])
    result = _result(config, shares, total, probe, load_ended - load_started)
    t0 = load_started + config.warmup_s
    result["window"] = window(total.get("completed", []), t0, t0 + config.scenario.duration_s)
    return result


def _progress_line(phase: str, elapsed: float, counts: dict[str, Any], probe: GatewayProbe) -> str:
    rss = probe.sample()
    errors = counts.get("errors") or {}
    refused = sum((counts.get("connections_refused") or {}).values())
    in_flight = (
        counts.get("sent", 0)
        - counts.get("answered", 0)
        - counts.get("incomplete", 0)
        - counts.get("unfinished", 0)
        - sum(errors.values())
    )
    return (
        f"[{elapsed:6.1f}s {phase:<10}] joined {counts.get('connections_joined', 0)} refused {refused}"
        f" | sent {counts.get('sent', 0)} answered {counts.get('answered', 0)} in flight {in_flight}"
        f" incomplete {counts.get('incomplete', 0)} errors {errors or '-'}"
        f" | gateway RSS {_mb(rss)}"
    )


def _mb(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f} MB"


def _result(
    config: RunConfig, shares: list[Share], total: dict[str, Any], probe: GatewayProbe, load_s: float
) -> dict[str, Any]:
    joined = total.get("connections_joined", 0)
    before, connected = probe.samples.get("before"), probe.samples.get("connected")
    per_connection = (connected - before) / joined if joined and before is not None and connected is not None else None
    minutes = load_s / 60 if load_s > 0 else None
    return {
        "scenario": asdict(config.scenario),
        "target": config.url if len(config.urls) == 1 else list(config.urls),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "generator_processes": len(shares),
        "load_seconds": round(load_s, 2),
        "warmup_seconds": config.warmup_s,
        "connections": {
            "wanted": config.scenario.connections,
            "opened": total.get("connections_opened", 0),
            "joined": joined,
            "refused": total.get("connections_refused", {}),
            "lost": total.get("connections_lost", {}),
        },
        "messages": {
            "sent": total.get("sent", 0),
            "answered": total.get("answered", 0),
            "incomplete": total.get("incomplete", 0),
            "unfinished": total.get("unfinished", 0),
            "skipped_busy": total.get("skipped_busy", 0),
            "errors": total.get("errors", {}),
            "chunks": total.get("chunks", 0),
            "answered_per_minute": round(total.get("answered", 0) / minutes, 1) if minutes else None,
            "sent_per_minute": round(total.get("sent", 0) / minutes, 1) if minutes else None,
        },
        "latency_ms": {
            "join": summary(total.get("join_ms", [])),
            "accepted": summary(total.get("accepted_ms", [])),
            "first_chunk": summary(total.get("first_chunk_ms", [])),
            "end": summary(total.get("end_ms", [])),
        },
        "gateway": {
            "pid": probe.pid,
            "rss_bytes": probe.samples,
            "rss_peak_bytes": probe.peak,
            "rss_per_connection_bytes": round(per_connection) if per_connection is not None else None,
        },
    }
