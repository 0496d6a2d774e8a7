"""Profile the hot path: py-spy samples the gateway and a worker while ``burst`` runs against them.

Prints, per process, the functions with the most samples on CPU (self) and the call paths they sit
in (total), grouped by file so that the share of uvicorn, aio-pika, asyncpg, pydantic and our own
code is visible. Needs ``py-spy`` (a dev dependency) and permission to attach (root, or ptrace).

Run: ``uv run python -m bench.profile --duration 15``.
"""

from __future__ import annotations

import argparse
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench import stack as s


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    argv = [str(s.BIN / "py-spy"), "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200"]
    return subprocess.Popen(
        [*argv, "--format", "raw", "--output", str(out), "--nonblocking"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise(path: Path, top: int) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        samples += n
        frames = stack.split(";")
        own[frames[-1]] += n
        by_package[_package(frames[-1])] += n
        for frame in set(frames):
            total[frame] += n
    lines = [f"{samples} samples on CPU"]
    lines.append("  self time by package: " + ", ".join(f"{k} {v / samples:.0%}" for k, v in by_package.most_common(8)))
    lines += [f"  {n / samples:6.1%} self  {frame[:130]}" for frame, n in own.most_common(top)]
    ours = [(f, n) for f, n in total.most_common() if "chat_" in f or "llm_worker" in f][:top]
    lines += [f"  {n / samples:6.1%} total {frame[:130]}" for frame, n in ours]
    return "\n".join(lines)


def _package(frame: str) -> str:
    where = frame[frame.find("(") + 1 : frame.find(":", frame.find("("))]
    return where.split("/")[0] if "/" in where else where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=15)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--variant", choices=["coalesced", "per-token"], default="coalesced")
    args = parser.parse_args()
    s.prepare()
    extra: dict[str, Any] = {"CHUNK_COALESCE_CHARS": 1} if args.variant == "per-token" else {}
    with s.stack() as running:
        gateway = running.gateway(WS_MAX_CONNECTIONS=args.users + 100, WS_RATE_LIMIT_MAX_MESSAGES=1_000_000)
        worker = running.worker(
            0, WORKER_CONCURRENCY=256, FAKE_LLM_FIRST_TOKEN_MS=0, FAKE_LLM_TOKENS_PER_SECOND=0, **extra
        )
        result: dict[str, Any] = {}
        load = threading.Thread(
            target=lambda: result.update(
                s.loadtest("burst", gateway.port, "--users", args.users, "--duration", args.duration + 6, "--settle", 0)
            )
        )
        load.start()
        time.sleep(4)  # connected and running
        outs = {name: s.LOG_DIR / f"profile-{name}.txt" for name in ("gateway", "worker")}
        spies = [record(gateway.pid, args.duration, outs["gateway"]), record(worker.pid, args.duration, outs["worker"])]
        for spy in spies:
            spy.wait()
        load.join()
    print(f"burst ({args.variant}): {result['messages']['answered_per_minute']} answered/min ({s.MACHINE_NOTE})")
    for name, path in outs.items():
        print(f"\n== {name}\n{summarise(path, args.top)}")


if __name__ == "__main__":
    main()
