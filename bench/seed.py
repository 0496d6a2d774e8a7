"""The original document's scenarios on the full stack, with realistic model pacing.

``peak``: 1000 users x 3 chats (3000 connections, WS_MAX_CONNECTIONS=3000 as recommended) at 1,000
messages per minute, the fake model at ~300 ms to the first token, 40 tokens/s, 80 tokens. Its own
time is first token + 79 intervals = 2,275 ms; the same load against the bare endpoint running the
same model (same run) is the measured baseline. Goal: p99 answer time minus the model's time <= 50 ms;
gateway RSS against the original's 500 MB.

``stress``: 1500 users at maximum activity (closed loop, the default rate limit of 30 messages per
minute per user), same model. Goal: no error other than RATE_LIMITED; gateway RSS back within 10 %
of its value before the connections once everyone has disconnected.

Run: ``uv run python -m bench.seed --runs 3 --duration 60``.
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import stack as s

REALISTIC = {"FAKE_LLM_FIRST_TOKEN_MS": 300, "FAKE_LLM_TOKENS_PER_SECOND": 40, "FAKE_LLM_ANSWER_TOKENS": 80}
MODEL_MS = 300 + 79 * 1000 / 40


def peak(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        if kind == "stack":
            proc = running.gateway(WS_MAX_CONNECTIONS=3000, WS_MAX_CONNECTIONS_PER_USER=3)
            running.worker(0, WORKER_CONCURRENCY=128, **REALISTIC)
        else:
            proc = running.bare(**REALISTIC)
        result = s.loadtest(
            "peak", proc.port, "--duration", args.duration, "--processes", 2, "--settle", 2,
            pid=proc.pid, tag=f"peak-{kind}",
        )  # fmt: skip
    return summarise(result)


def stress(args: argparse.Namespace) -> dict[str, Any]:
    with s.stack() as running:
        proc = running.gateway()
        running.worker(0, WORKER_CONCURRENCY=args.stress_concurrency, **REALISTIC)
        result = s.loadtest(
            "stress", proc.port, "--duration", args.duration, "--processes", 2, "--settle", 5,
            pid=proc.pid, tag="stress",
        )  # fmt: skip
    figures = summarise(result)
    rss = result["gateway"]["rss_bytes"]
    figures["rss_after_disconnect_mb"] = rss["after_disconnect"] / 2**20
    figures["rss_back_within_pct"] = (rss["after_disconnect"] - rss["before"]) / rss["before"] * 100
    return figures


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    latency, messages, rss = result["latency_ms"], result["messages"], result["gateway"]["rss_bytes"]
    return {
        "joined": result["connections"]["joined"],
        "refused": result["connections"]["refused"],
        "sent": messages["sent"],
        "answered": messages["answered"],
        "answered_per_minute": messages["answered_per_minute"],
        "incomplete": messages["incomplete"],
        "errors": messages["errors"],
        "accepted_p99": latency["accepted"]["p99"],
        "first_chunk_p99": latency["first_chunk"]["p99"],
        "end_p50": latency["end"]["p50"],
        "end_p99": latency["end"]["p99"],
        "rss_before_mb": rss["before"] / 2**20,
        "rss_peak_mb": (result["gateway"]["rss_peak_bytes"] or 0) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--stress-concurrency", type=int, default=200, help="WORKER_CONCURRENCY in stress")
    parser.add_argument("--only", choices=["peak", "stress"])
    args = parser.parse_args()
    s.prepare()
    runs: dict[str, list[dict[str, Any]]] = {"peak-stack": [], "peak-bare": [], "stress": []}
    for index in range(args.runs):
        if args.only != "stress":
            for kind in ("stack", "bare"):
                figures = peak(kind, args)
                figures["load"] = s.load_note()
                runs[f"peak-{kind}"].append(figures)
                print(f"run {index + 1} peak-{kind} {figures}", flush=True)
        if args.only != "peak":
            figures = stress(args)
            figures["load"] = s.load_note()
            runs["stress"].append(figures)
            print(f"run {index + 1} stress {figures}", flush=True)
    print(f"\nseed scenarios, median of {args.runs} ({s.MACHINE_NOTE}):")
    if runs["peak-stack"]:
        stack_p99 = s.median([r["end_p99"] for r in runs["peak-stack"]])
        bare_p99 = s.median([r["end_p99"] for r in runs["peak-bare"]])
        rss = s.median([r["rss_peak_mb"] for r in runs["peak-stack"]])
        print(
            f"  peak   p99 answer {stack_p99:.0f} ms; minus the model's {MODEL_MS:.0f} ms: "
            f"{stack_p99 - MODEL_MS:+.0f} ms"
        )
        print(f"         bare endpoint, same model, same load: p99 {bare_p99:.0f} ms ({bare_p99 - MODEL_MS:+.0f} ms)")
        print(f"         stack minus bare: {stack_p99 - bare_p99:+.0f} ms (goal <= 50 ms over the model)")
        print(f"         gateway RSS peak {rss:.0f} MB (the original's figure: about 500 MB)")
    if runs["stress"]:
        errors = [r["errors"] for r in runs["stress"]]
        back = s.median([r["rss_back_within_pct"] for r in runs["stress"]])
        print(f"  stress errors per run {errors} (goal: RATE_LIMITED only)")
        print(f"         RSS after disconnect vs before: {back:+.1f} % (goal: within 10 %)")
    path = s.save("seed", {"args": vars(args), "runs": runs, "model_ms": MODEL_MS})
    print(f"  saved {path}")


if __name__ == "__main__":
    main()
