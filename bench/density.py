"""Density: one gateway process holding N joined, authenticated connections vs a bare endpoint.

For each run: start a gateway (no worker is needed for silent connections), open N connections from
``chat-loadtest idle`` (several generator processes: each holds its sockets under the descriptor
limit), read the gateway's RSS before and once all have joined; then the same against the bare
FastAPI/uvicorn endpoint (``bench.bare_server``, same uvicorn options). Median of the runs.

Run: ``uv run python -m bench.density --connections 10000 --runs 3``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import stack as s


def one(kind: str, connections: int, processes: int) -> dict[str, Any]:
    with s.stack() as running:
        if kind == "gateway":
            proc = running.gateway(WS_MAX_CONNECTIONS=connections + 100, DATABASE_POOL_SIZE=20)
        else:
            proc = running.bare()
        result = s.loadtest(
            "idle",
            proc.port,
            "--users", connections, "--chats", 1, "--duration", 3, "--processes", processes,
            "--settle", 2, "--connect-concurrency", 200,
            pid=proc.pid,
            tag=kind,
        )  # fmt: skip
    gateway = result["gateway"]
    return {
        "joined": result["connections"]["joined"],
        "refused": result["connections"]["refused"],
        "rss_before_mb": gateway["rss_bytes"]["before"] / 2**20,
        "rss_connected_mb": gateway["rss_bytes"]["connected"] / 2**20,
        "per_connection_kb": gateway["rss_per_connection_bytes"] / 1024,
        "open_fds": gateway["rss_bytes"].get("open_fds_connected"),
        "join_p99_ms": result["latency_ms"]["join"]["p99"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    s.prepare()
    runs: dict[str, list[dict[str, Any]]] = {"gateway": [], "bare": []}
    for index in range(args.runs):
        for kind in ("gateway", "bare"):
            figures = one(kind, args.connections, args.processes)
            figures["load"] = s.load_note()
            runs[kind].append(figures)
            print(
                f"run {index + 1} {kind:8} joined {figures['joined']:>6}  RSS {figures['rss_before_mb']:.1f} ->"
                f" {figures['rss_connected_mb']:.1f} MB  {figures['per_connection_kb']:.1f} KB/connection"
                f"  fds {figures['open_fds']}  ({figures['load']})",
                flush=True,
            )
    gateway = s.median([r["per_connection_kb"] for r in runs["gateway"]])
    bare = s.median([r["per_connection_kb"] for r in runs["bare"]])
    joined = min(r["joined"] for r in runs["gateway"])
    print(f"\ndensity, median of {args.runs} ({s.MACHINE_NOTE}):")
    print(f"  gateway  {gateway:.1f} KB per connection, {joined} joined connections (least of the runs)")
    print(f"  bare     {bare:.1f} KB per connection")
    print(f"  ratio    {gateway / bare:.2f} x the bare endpoint (goal <= 1.2)")
    path = s.save("density", {"runs": runs, "median_kb": {"gateway": gateway, "bare": bare}, "ratio": gateway / bare})
    print(f"  saved {path}")


if __name__ == "__main__":
    main()
