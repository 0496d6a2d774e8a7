"""``chat-loadtest SCENARIO``: run a load scenario against a running gateway and report what happened.

Scenarios: baseline (500 users x 2 chats), peak (1000 x 3), stress (1500 users, maximum activity),
idle (joined, silent connections) and burst (closed loop; run the fake model with no delay).
Every figure can be overridden by a flag. Tokens are signed with ``JWT_SECRET`` (HS256), like the
development tokens of ``scripts/run.sh``. Progress goes to stderr, a summary to stdout, and the
whole result to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from chat_loadtest import procinfo
from chat_loadtest.runner import run_load
from chat_loadtest.scenarios import SCENARIOS
from chat_loadtest.share import RunConfig

DEV_SECRET = "dev-secret-change-me-in-production-0123456789"  # noqa: S105 - run.sh's public dev default
"""the default of ``scripts/run.sh``, so that the tool works against it without configuration."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat-loadtest",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="\n".join(f"{s.name:9} {s.description}" for s in SCENARIOS.values()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    default_url = os.environ.get("LOADTEST_URL") or f"ws://127.0.0.1:{os.environ.get('GATEWAY_PORT', '3000')}/ws/chat"
    parser.add_argument(
        "--url",
        action="append",
        dest="urls",
        help=f"gateway WebSocket URL (default {default_url}); repeat it to spread the connections over"
        " several gateways",
    )
    parser.add_argument("--users", type=int, help="number of users")
    parser.add_argument("--chats", type=int, help="connections per user, each in a chat of its own")
    parser.add_argument("--duration", type=float, dest="duration_s", help="seconds of load (the measured window)")
    parser.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="seconds of load before the measured window: the result's `window` counts only the answers"
        " completed within [start + warmup, start + warmup + duration]",
    )
    parser.add_argument("--rate", type=float, help="messages per minute in all (rate-mode scenarios)")
    parser.add_argument("--mode", choices=["rate", "closed", "idle"], help="override the scenario's mode")
    parser.add_argument("--processes", type=int, default=1, help="generator processes (for many sockets or much load)")
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=200,
        help="handshakes in progress at once, over all processes (keep it under the gateway's"
        " WS_MAX_UNAUTHENTICATED_PER_ADDRESS, 256 by default)",
    )
    parser.add_argument("--answer-timeout", type=float, default=130.0, help="seconds before an answer counts as lost")
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to let answers finish after the load")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after disconnecting before the last RSS")
    parser.add_argument("--secret", default=None, help="HS256 secret (default: $JWT_SECRET, else run.sh's)")
    parser.add_argument("--audience", default=os.environ.get("JWT_AUDIENCE"))
    parser.add_argument("--issuer", default=os.environ.get("JWT_ISSUER"))
    parser.add_argument("--user-prefix", default=None, help="user ids are PREFIX-N (default: a fresh run id)")
    parser.add_argument("--gateway-pid", type=int, help="gateway process to measure (default: found by the port)")
    parser.add_argument("--out", type=Path, help="JSON result file (default loadtest-SCENARIO-TIME.json)")
    parser.add_argument(
        "--fail-on-error",
        action="store_true",
        help="exit 1 unless every connection joined and every answer arrived complete (RATE_LIMITED allowed)",
    )
    args = parser.parse_args(argv)
    args.urls = tuple(args.urls or [default_url])
    return args


def build_config(args: argparse.Namespace) -> RunConfig:
    scenario = SCENARIOS[args.scenario].with_overrides(
        users=args.users, chats=args.chats, duration_s=args.duration_s, rate=args.rate, mode=args.mode
    )
    if scenario.users < 1 or scenario.chats < 1 or scenario.duration_s < 0 or args.warmup < 0:
        raise SystemExit("--users and --chats must be at least 1, --duration and --warmup not negative")
    return RunConfig(
        scenario=scenario,
        urls=args.urls,
        secret=args.secret or os.environ.get("JWT_SECRET") or DEV_SECRET,
        audience=args.audience,
        issuer=args.issuer,
        user_prefix=args.user_prefix or f"load-{uuid.uuid4().hex[:8]}",
        processes=args.processes,
        connect_concurrency=args.connect_concurrency,
        answer_timeout=args.answer_timeout,
        drain_s=args.drain,
        warmup_s=args.warmup,
    )


def failures(result: dict[str, Any]) -> list[str]:
    """What makes a run not clean: refused or lost connections, errors other than RATE_LIMITED,
    answers that were incomplete or never finished."""
    problems = []
    connections, messages = result["connections"], result["messages"]
    if connections["joined"] < connections["wanted"]:
        missing = connections["wanted"] - connections["joined"]
        problems.append(f"{missing} connections not joined: {connections['refused']}")
    if connections["lost"]:
        problems.append(f"connections lost: {connections['lost']}")
    errors = {code: n for code, n in messages["errors"].items() if code != "RATE_LIMITED"}
    if errors:
        problems.append(f"errors: {errors}")
    if messages["incomplete"] or messages["unfinished"]:
        problems.append(f"{messages['incomplete']} incomplete and {messages['unfinished']} unfinished answers")
    return problems


def render(result: dict[str, Any]) -> str:
    c, m, lat, gw = result["connections"], result["messages"], result["latency_ms"], result["gateway"]
    rss = gw["rss_bytes"]

    def mb(key: str) -> str:
        value = rss.get(key)
        return "n/a" if value is None else f"{value / 2**20:.1f} MB"

    lines = [
        f"scenario {result['scenario']['name']}: {result['scenario']['users']} users x {result['scenario']['chats']}"
        f" chats, {result['scenario']['mode']} mode, {result['load_seconds']} s of load against {result['target']}",
        f"connections  joined {c['joined']}/{c['wanted']}  refused {c['refused'] or 0}  lost {c['lost'] or 0}",
        f"messages     sent {m['sent']}  answered {m['answered']}  incomplete {m['incomplete']}"
        f"  unfinished {m['unfinished']}  errors {m['errors'] or 0}",
        f"throughput   {m['answered_per_minute']} answered/min ({m['sent_per_minute']} sent/min), {m['chunks']} chunks",
    ]
    for name, stats in lat.items():
        if stats["count"]:
            lines.append(
                f"{name + ' ms':<13}p50 {stats['p50']}  p95 {stats['p95']}  p99 {stats['p99']}  max {stats['max']}"
                f"  (n={stats['count']})"
            )
    win = result["window"]
    lines.append(
        f"window       {win['answered']} answered in {win['seconds']} s after {result['warmup_seconds']} s of"
        f" warm-up: {win['answers_per_s']} answers/s; end p50 {win['latency_ms']['end']['p50']}"
        f" p99 {win['latency_ms']['end']['p99']} ms"
    )
    per = gw["rss_per_connection_bytes"]
    lines.append(
        f"gateway RSS  before {mb('before')}  connected {mb('connected')}  after load {mb('after_load')}"
        f"  after disconnect {mb('after_disconnect')}  per connection "
        + ("n/a" if per is None else f"{per / 1024:.1f} KB")
        + f"  (pid {gw['pid']})"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = build_config(args)
    port = urlparse(config.url).port or 80
    pid = args.gateway_pid or procinfo.pid_listening_on(port)
    if pid is None:
        print(f"note: no process found listening on port {port}; gateway RSS will not be reported", file=sys.stderr)
    result = run_load(config, gateway_pid=pid, settle_s=args.settle)
    out = args.out or Path(f"loadtest-{config.scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    out.write_text(json.dumps(result, indent=2))
    print(render(result))
    print(f"result written to {out}")
    problems = failures(result)
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if args.fail_on_error and problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
