"""The original document's scenarios on the full stack, with realistic model pacing.

``peak``: 1000 users x 3 chats (3000 connections, WS_MAX_CONNECTIONS=3000 as recommended) at 1,000
messages per minute, the fake model at ~300 ms to the first token, 40 tokens/s, 80 tokens. Its own
time is first token + 79 intervals = 2,275 ms; the same load against the bare endpoint running the
same model (same run) is the measured baseline. Goal: p99 answer time minus the model's time <= 50 ms;
gateway RSS against the original's 500 MB.

``stress``: 1500 users at maximum activity (closed loop, the default rate limit of 30 messages per
minute per user), same model, ``--stress-workers`` workers. Goals: no error other than RATE_LIMITED,
p99 answer minus the model's time <= 500 ms, gateway RSS back within 10 % of its value before the
connections once everyone has disconnected.

Latencies are those of the answers completed within the measured window (``--warmup`` seconds of
load first, then ``--duration``), with CPU per answer of every process over it; ``--generators``
load-generator processes. Median of the kept runs (see ``bench.runs``); the last line on stdout is
one JSON object.

Run: ``uv run python -m bench.seed --runs 3 --duration 60``.
"""

from __future__ import annotations

import argparse
import functools
from typing import Any

from bench import runs
from bench import stack as s

REALISTIC = {"FAKE_LLM_FIRST_TOKEN_MS": 300, "FAKE_LLM_TOKENS_PER_SECOND": 40, "FAKE_LLM_ANSWER_TOKENS": 80}
MODEL_MS = 300 + 79 * 1000 / 40


def peak(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        if kind == "stack":
            proc = running.gateway(WS_MAX_CONNECTIONS=3000, WS_MAX_CONNECTIONS_PER_USER=3)
            for index in range(args.workers):
                running.worker(index, WORKER_CONCURRENCY=args.peak_concurrency, **REALISTIC)
        else:
            proc = running.bare(s.BARE_PORT, **REALISTIC)
        result = s.loadtest(
            "peak", proc.port, "--users", args.peak_users, "--rate", args.peak_rate,
            "--duration", args.duration, "--warmup", args.warmup,
            "--processes", args.generators, "--settle", 2,
            pid=proc.pid, tag=f"peak-{kind}", cpu_groups=s.service_groups(running),
        )  # fmt: skip
    return summarise(result)


def stress(args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        proc = running.gateway()
        for index in range(args.stress_workers):
            running.worker(index, WORKER_CONCURRENCY=args.stress_concurrency, **REALISTIC)
        result = s.loadtest(
            "stress", proc.port, "--users", args.stress_users, "--duration", args.duration, "--warmup", args.warmup,
            "--processes", args.generators, "--settle", 5,
            pid=proc.pid, tag="stress", cpu_groups=s.service_groups(running),
        )  # fmt: skip
    figures = summarise(result)
    rss = result["gateway"]["rss_bytes"]
    figures["rss_after_disconnect_mb"] = round(rss["after_disconnect"] / 2**20, 1)
    figures["rss_back_within_pct"] = round((rss["after_disconnect"] - rss["before"]) / rss["before"] * 100, 1)
    return figures


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    latency, messages, rss = result["latency_ms"], result["messages"], result["gateway"]["rss_bytes"]
    window = result["window"]
    end_p99 = window["latency_ms"]["end"]["p99"]
    return {
        "joined": result["connections"]["joined"],
        "refused": result["connections"]["refused"],
        "answered_in_window": window["answered"],
        "answers_per_s": window["answers_per_s"],
        "end_p50": window["latency_ms"]["end"]["p50"],
        "end_p99": end_p99,
        "p99_minus_model_ms": None if end_p99 is None else round(end_p99 - MODEL_MS, 1),
        "first_chunk_p99": window["latency_ms"]["first_chunk"]["p99"],
        "cpu_us_per_answer": result["cpu_us_per_answer"],
        "sent": messages["sent"],
        "answered": messages["answered"],
        "incomplete": messages["incomplete"],
        "unfinished": messages["unfinished"],
        "errors": messages["errors"],
        "other_errors": sum(n for code, n in messages["errors"].items() if code != "RATE_LIMITED"),
        "accepted_p99": latency["accepted"]["p99"],
        "rss_before_mb": round(rss["before"] / 2**20, 1),
        "rss_peak_mb": round((result["gateway"]["rss_peak_bytes"] or 0) / 2**20, 1),
    }


def parse_args() -> argparse.Namespace:
    parser = runs.parser(__doc__, duration=60)
    peak = parser.add_argument_group("peak")
    peak.add_argument("--peak-users", type=int, default=1000, help="users in peak (3 connections each)")
    peak.add_argument("--peak-rate", type=float, default=1000, help="messages per minute in peak")
    peak.add_argument("--workers", type=int, default=1, help="LLM workers in peak")
    peak.add_argument("--peak-concurrency", type=int, default=128, help="WORKER_CONCURRENCY in peak")
    parser.add_argument("--only", choices=["peak", "stress"])
    stress = parser.add_argument_group("stress")
    stress.add_argument("--stress-users", type=int, default=1500, help="users in stress")
    stress.add_argument("--stress-workers", type=int, default=1, help="LLM workers in stress")
    stress.add_argument("--stress-concurrency", type=int, default=200, help="WORKER_CONCURRENCY in stress")
    parser.add_argument("--generators", type=int, default=2, help="load generator processes")
    return parser.parse_args()


def report(taken: runs.Runs) -> dict[str, Any]:
    """Print the medians; return the figures of the final JSON line."""

    def p99_over_model(kind: str) -> float | None:
        return taken.median(kind, lambda r: r["p99_minus_model_ms"])

    figures: dict[str, Any] = {"model_ms": MODEL_MS}
    print(f"\nseed scenarios, median of the kept runs ({s.MACHINE_NOTE}):")
    if "peak-stack" in taken.by_kind:
        figures |= {
            "peak_p99_minus_model_ms": p99_over_model("peak-stack"),
            "peak_bare_p99_minus_model_ms": p99_over_model("peak-bare"),
            "peak_first_chunk_p99_ms": taken.median("peak-stack", lambda r: r["first_chunk_p99"]),
            "peak_gateway_rss_mb": taken.median("peak-stack", lambda r: r["rss_peak_mb"]),
            "peak_cpu_us_per_answer": taken.median_of_keys("peak-stack", "cpu_us_per_answer"),
        }
        print(f"  peak   p99 answer minus the model's {MODEL_MS:.0f} ms: {s.fmt(figures['peak_p99_minus_model_ms'])} ms"
              f" (bare endpoint: {s.fmt(figures['peak_bare_p99_minus_model_ms'])} ms; goal <= 50 ms)")  # fmt: skip
        print(f"         gateway RSS peak {s.fmt(figures['peak_gateway_rss_mb'], ' MB')} (the original: about 500 MB)")
    if "stress" in taken.by_kind:
        figures |= {
            "stress_p99_minus_model_ms": p99_over_model("stress"),
            "stress_first_chunk_p99_ms": taken.median("stress", lambda r: r["first_chunk_p99"]),
            "stress_errors": [r["errors"] for r in taken.kept("stress")],
            "stress_other_errors": max((r["other_errors"] for r in taken.kept("stress")), default=None),
            "stress_rss_after_disconnect_pct": taken.median("stress", lambda r: r["rss_back_within_pct"]),
            "stress_cpu_us_per_answer": taken.median_of_keys("stress", "cpu_us_per_answer"),
        }
        print(f"  stress errors per kept run {figures['stress_errors']} (goal: RATE_LIMITED only)")
        print(f"         p99 answer minus the model: {s.fmt(figures['stress_p99_minus_model_ms'])} ms (goal <= 500 ms)")
        print(f"         RSS after disconnect vs before: {s.fmt(figures['stress_rss_after_disconnect_pct'], ' %')}"
              " (goal: within 10 %)")  # fmt: skip
    return figures


def main() -> None:
    args = parse_args()
    s.prepare()
    taken = runs.Runs.from_args(args)
    for index in range(args.runs):
        if args.only != "stress":
            for kind in ("stack", "bare"):
                taken.take(f"peak-{kind}", index, functools.partial(peak, kind, args))
        if args.only != "peak":
            taken.take("stress", index, lambda: stress(args))
    figures = report(taken)
    path = s.save("seed", {"args": vars(args), "runs": taken.by_kind, "model_ms": MODEL_MS})
    print(f"  saved {path}  (load average now {runs.load_avg()})")
    runs.emit({**figures, "workers": args.workers, "stress_workers": args.stress_workers, **taken.summary()})


if __name__ == "__main__":
    main()
